"""Worker settings for tests: fast retries and polling, no .env file."""

from __future__ import annotations

from typing import Any

from billing_worker.settings import Settings


def make_settings(database_url: str, rabbitmq_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "rabbitmq_url": rabbitmq_url,
        "retry_delays_ms": (50, 100, 200),
        "outbox_poll_interval_ms": 200,
        "log_format": "text",
        "sandbox_enabled": True,  # tests drive most payments through the sandbox
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def provider_settings(
    database_url: str, rabbitmq_url: str, stripe_base: str, yookassa_base: str, **overrides: Any
) -> Settings:
    """A worker's settings with Stripe and YooKassa pointed at their HTTP fakes."""
    from support.relay import WEBHOOK_SECRET

    values: dict[str, Any] = {
        "stripe_api_key": "sk_test_billing",
        "stripe_api_base": stripe_base,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "yookassa_account_id": "123456",
        "yookassa_secret_key": "test_secret",
        "yookassa_api_url": f"{yookassa_base}/v3",
        "default_provider": "sandbox",
        "provider_timeout_seconds": 1.0,
        "max_deliveries": 3,
        "trusted_proxies": ("10.0.0.0/8",),
        "reconcile_after_seconds": 3600,
    }
    return make_settings(database_url, rabbitmq_url, **(values | overrides))
