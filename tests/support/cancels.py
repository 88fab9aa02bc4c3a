"""Deposits to cancel, for the integration tests of `billing.wallet.deposit.cancel` and
of the reconciler's expiry: commands, the provider's objects in the fakes, the trail."""

from __future__ import annotations

import uuid
from typing import Any

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.rpc import Bus
from support.snapshot import assert_ledger_sound

DEPOSIT = "billing.wallet.deposit"
CANCEL = "billing.wallet.deposit.cancel"


def new_user() -> str:
    return f"cancel-{uuid.uuid4().hex[:8]}"


def deposit_of(user: str, provider: str, **extra: Any) -> dict[str, Any]:
    currency = "RUB" if provider == "yookassa" else "USD"
    return {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": provider,
            "amount": {"amount": "20.00", "currency": currency}, **extra}  # fmt: skip


def cancel_of(user: str, transaction_id: str) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "user_id": user, "transaction_id": transaction_id}


async def pending(bus: Bus, user: str, provider: str, **extra: Any) -> str:
    reply = await bus.call(DEPOSIT, deposit_of(user, provider, **extra))
    assert reply["ok"], reply
    assert reply["data"]["transaction"]["status"] == "processing"
    return str(reply["data"]["transaction"]["id"])


def stripe_intent(fake: FakeStripe, transaction_id: str) -> dict[str, Any]:
    [intent] = [pi for pi in fake.payment_intents.values()
                if pi["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
    return intent


def yookassa_payment(fake: FakeYooKassa, transaction_id: str) -> dict[str, Any]:
    [payment] = [p for p in fake.payments.values()
                 if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
    return payment


async def balance(bus: Bus, user: str, currency: str = "USD") -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": currency})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def trail(worker: Worker, transaction_id: str) -> list[tuple[str, str | None]]:
    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT to_status, reason FROM transaction_transitions WHERE transaction_id = $1 "
            "ORDER BY id",
            uuid.UUID(transaction_id),
        )
    return [(row["to_status"], row["reason"]) for row in rows]


async def audit_clean(worker: Worker, *users: str) -> None:
    async with driver_connection(worker.engine) as db:
        await assert_ledger_sound(db, users)
        intents = await db.fetchval("SELECT count(*) FROM provider_intents")
    assert intents == 0
