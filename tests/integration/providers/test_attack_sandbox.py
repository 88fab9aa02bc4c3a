"""Attacks through the built-in sandbox provider on a worker with real provider keys.

A11: the sandbox moves money without any provider. In production (Stripe and YooKassa
keys set) it must be off unless enabled explicitly (`sandbox_enabled`), and when it is
on, only callbacks the worker itself signed (`x-billing-sandbox-signature`) may settle a
sandbox payment, not a sandbox-shaped body any broker user publishes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.attacker import Attacker, Ledger, handled, sandbox_ids, until_handled
from support.invariants import connect
from support.rpc import Bus
from support.settings import provider_settings

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url


@pytest.fixture
def sandbox_settings() -> dict[str, Any]:
    """Extra settings; production's by default: the sandbox as Settings leaves it when
    nothing mentions it (tests' make_settings turns it on, so undo that here)."""
    return {"sandbox_enabled": Settings.model_fields["sandbox_enabled"].default}


@pytest.fixture
def settings(
    database_url: str,
    rabbitmq_url: str,
    stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
    sandbox_settings: dict[str, Any],
) -> Settings:
    """The provider fixture's settings, as production runs them: Stripe by default."""
    return provider_settings(
        database_url, rabbitmq_url, stripe_fake[1], yookassa_fake[1],
        default_provider="stripe", **sandbox_settings,
    )  # fmt: skip


@pytest.fixture
async def attacker(worker: Worker, rabbitmq_url: str) -> AsyncIterator[Attacker]:
    attacker = Attacker(worker, rabbitmq_url)
    await attacker.start()
    yield attacker
    await attacker.close()


@pytest.fixture
async def ledger(database_url: str, worker: Worker) -> AsyncIterator[Ledger]:
    async with connect(database_url) as db:
        yield Ledger(db)


def sandbox_deposit(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "amount": {"amount": "20.00", "currency": "USD"},
        "provider": "sandbox",
        **extra,
    }


async def test_a11_the_sandbox_is_refused_where_real_providers_are_configured(
    bus: Bus, ledger: Ledger
) -> None:
    user = f"attack-{uuid.uuid4().hex[:8]}"

    reply = await bus.call(DEPOSIT, sandbox_deposit(user))

    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "provider_error"
    assert await ledger.transactions(user) == []
    assert await ledger.balance(user, "USD") == 0
    assert await ledger.events("payment.success", user) == []
    await ledger.assert_audit_clean()


@pytest.mark.parametrize("sandbox_settings", [{"sandbox_enabled": True}], ids=["enabled"])
@pytest.mark.parametrize("event_id", ["its own event id", "a fresh event id"])
async def test_a11_a_forged_sandbox_success_does_not_settle_a_declined_payment(
    event_id: str, bus: Bus, worker: Worker, attacker: Attacker, ledger: Ledger
) -> None:
    user = f"attack-{uuid.uuid4().hex[:8]}"
    # The worker's own (declining) callback waits in the outbox while the attacker acts.
    await worker.publisher.stop()
    try:
        declined = sandbox_deposit(user, payment_method_id="pm_card_chargeDeclined")
        reply = await bus.call(DEPOSIT, declined)
        assert reply["ok"], reply
        transaction_id = reply["data"]["transaction"]["id"]
        assert await ledger.status(transaction_id) == "processing"
        payment_id, own_event_id = sandbox_ids(transaction_id)
        forged = {
            "id": own_event_id if event_id == "its own event id" else f"sbx_evt_{uuid.uuid4()}",
            "type": "payment.succeeded",
            "data": {"payment_id": payment_id, "transaction_id": transaction_id,
                     "amount_minor": 2000, "currency": "USD"},
        }  # fmt: skip

        await attacker.forge("sandbox", forged)

        assert await ledger.status(transaction_id) == "processing"
        assert await ledger.balance(user, "USD") == 0
        before = handled(worker)
    finally:
        worker.publisher.start()
    await until_handled(worker, before + 1)  # the worker's own callback: declined

    assert await ledger.status(transaction_id) == "failed"
    assert await ledger.balance(user, "USD") == 0
    assert await ledger.events("payment.success", user) == []
    [failed] = await ledger.events("payment.failed", user)
    assert failed["failure_code"] == "card_declined"
    await ledger.assert_audit_clean()
