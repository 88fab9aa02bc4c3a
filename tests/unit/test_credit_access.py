"""Who may send `billing.wallet.credit`: only a broker user the policy names for it by its
exact name; nobody while the policy is off, unless the development setting opens it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from billing_contracts import names
from billing_worker.access import Access, AccessPolicy, load_policy
from billing_worker.app import access_for
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from billing_worker.settings import Settings

CREDIT = names.WALLET_CREDIT
ROOT = Path(__file__).resolve().parents[2]
QUEUES = (*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE)


def test_a_wildcard_never_grants_a_credit_only_its_exact_name_does() -> None:
    policy = AccessPolicy({"shop": ("billing.wallet.*",), "root": ("*",), "admin": (CREDIT,)})
    assert policy.allows("shop", names.WALLET_WITHDRAW)
    assert policy.allows("shop", names.WALLET_HOLD_CAPTURE)
    assert not policy.allows("shop", CREDIT)
    assert not policy.allows("root", CREDIT)
    assert policy.allows("admin", CREDIT)


def test_with_a_policy_only_the_named_user_may_credit_not_even_the_worker() -> None:
    access = Access("worker", AccessPolicy({"admin": (CREDIT,), "shop": ("billing.wallet.*",)}))
    sender = names.SENDER_HEADER
    assert access.refusal(CREDIT, "admin", {}) is None
    assert access.refusal(CREDIT, "shop", {}) == f"broker user 'shop' may not send to {CREDIT}"
    assert access.refusal(CREDIT, "worker", {}) is not None
    assert access.refusal(CREDIT, None, {}) is not None
    assert access.refusal(CREDIT, "worker", {sender: "admin"}) is None  # its retry copy
    assert access.refusal(CREDIT, "worker", {sender: "shop"}) is not None
    assert access.refusal(names.WALLET_DEPOSIT, "worker", {}) is None  # others as before


def test_without_a_policy_nobody_may_credit_unless_development_opens_it() -> None:
    closed = Access("guest")
    assert closed.refusal(names.WALLET_WITHDRAW, None, {}) is None  # everything else is open
    refusal = closed.refusal(CREDIT, "guest", {})
    assert refusal is not None
    assert "BILLING_CREDIT_WITHOUT_POLICY" in refusal
    opened = Access("guest", privileged_without_policy=True)
    assert opened.refusal(CREDIT, "guest", {}) is None
    assert opened.refusal(CREDIT, None, {}) is not None  # still: who granted it?


def test_the_development_setting_reaches_the_access_check_and_is_off_by_default() -> None:
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert default.credit_without_policy is False
    assert access_for(default, "guest", list(QUEUES)).refusal(CREDIT, "guest", {}) is not None
    opened = Settings(_env_file=None, credit_without_policy=True)  # type: ignore[call-arg]
    assert access_for(opened, "guest", list(QUEUES)).refusal(CREDIT, "guest", {}) is None


def test_the_development_setting_is_refused_together_with_a_policy(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="BILLING_CREDIT_WITHOUT_POLICY"):
        Settings(  # type: ignore[call-arg]
            _env_file=None, credit_without_policy=True, access_policy=tmp_path / "p.toml"
        )


def test_the_deploy_policy_lets_only_the_admin_credit() -> None:
    policy = load_policy(ROOT / "deploy" / "access-policy.toml", QUEUES)
    assert {user for user in policy.users if policy.allows(user, CREDIT)} == {"billing-admin"}
    for client in ("storefront", "orders-service"):
        assert policy.allows(client, names.WALLET_HOLD)
        assert policy.allows(client, names.WALLET_HOLD_CAPTURE)
        assert policy.allows(client, names.WALLET_HOLD_RELEASE)
