"""The sandbox exists only when asked for, and never next to live provider keys."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from billing_worker.app import build_gateways
from billing_worker.settings import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_sandbox_is_off_unless_enabled() -> None:
    plain = settings()
    assert plain.sandbox_enabled is False
    assert "sandbox" not in build_gateways(plain)
    assert plain.provider_for_deposits is None
    assert "sandbox" in build_gateways(settings(sandbox_enabled=True))
    assert settings(sandbox_enabled=True).provider_for_deposits == "sandbox"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"stripe_api_key": "sk_live_123"}, "BILLING_STRIPE_API_KEY is a live key"),
        ({"stripe_api_key": "rk_live_123"}, "BILLING_STRIPE_API_KEY is a live key"),
        (
            {"yookassa_account_id": "1", "yookassa_secret_key": "live_abc"},
            "BILLING_YOOKASSA_SECRET_KEY is not a test_ key",
        ),
    ],
)
def test_the_sandbox_is_refused_next_to_live_keys(values: dict[str, str], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        settings(sandbox_enabled=True, **values)
    settings(**values)  # live keys alone are what production runs with


def test_test_keys_may_run_beside_the_sandbox() -> None:
    both = settings(
        sandbox_enabled=True,
        stripe_api_key="sk_test_123",
        yookassa_account_id="1",
        yookassa_secret_key="test_abc",
    )
    assert set(build_gateways(both).names) == {"sandbox", "stripe", "yookassa"}


def test_the_sandbox_as_default_provider_needs_it_enabled() -> None:
    with pytest.raises(ValidationError, match="BILLING_SANDBOX_ENABLED=true"):
        settings(default_provider="sandbox")
