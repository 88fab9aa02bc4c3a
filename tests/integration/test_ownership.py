"""Attacks of one user on another's objects and idempotency keys, each done as reported.

Every test does what the attacker did over RabbitMQ, against a real worker, and asserts
the refusal (`not_found`, worded exactly as for an id that does not exist) and that no
balance, transaction, subscription, invoice or payment method of anyone involved moved.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from support.rpc import Bus
from support.snapshot import assert_ledger_sound, state_of

pytestmark = pytest.mark.integration

DEPOSIT, WITHDRAW = "billing.wallet.deposit", "billing.wallet.withdraw"
BALANCE, TRANSACTIONS = "billing.wallet.balance", "billing.wallet.transactions"
INVOICE_CREATE, INVOICE_PAY, INVOICE_GET = (
    "billing.invoice.create", "billing.invoice.pay", "billing.invoice.get",
)  # fmt: skip
SUB_CREATE, SUB_CANCEL, SUB_GET = (
    "billing.subscription.create", "billing.subscription.cancel", "billing.subscription.get",
)  # fmt: skip


def new_user(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:10]}"


def key() -> str:
    return uuid.uuid4().hex


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


@asynccontextmanager
async def database(worker: Worker) -> AsyncIterator[asyncpg.Connection]:
    async with driver_connection(worker.engine) as db:
        yield db


async def unchanged(worker: Worker, users: list[str], attack: Callable[[], Awaitable[Any]]) -> Any:
    """Run the attack; assert it changed nothing of `users` and the ledger is sound."""
    async with database(worker) as db:
        before = await state_of(db, users)
    result = await attack()
    async with database(worker) as db:
        assert await state_of(db, users) == before
        await assert_ledger_sound(db, users)
    return result


async def fund(bus: Bus, user: str, amount: str, idempotency_key: str | None = None) -> None:
    reply = await bus.call(
        DEPOSIT,
        {"idempotency_key": idempotency_key or key(), "user_id": user, "amount": usd(amount),
         "provider": "sandbox"},
    )  # fmt: skip
    assert reply["ok"], reply
    deposit_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == deposit_id)


async def balance_of(bus: Bus, user: str) -> str:
    reply = await bus.call(BALANCE, {"user_id": user, "currency": "USD"})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def invoice_of(bus: Bus, user: str, amount: str = "3.00") -> dict[str, Any]:
    reply = await bus.call(
        INVOICE_CREATE,
        {"idempotency_key": key(), "user_id": user, "currency": "USD",
         "lines": [{"description": "Blue mug", "quantity": 1, "unit_price": usd(amount)}]},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def subscription_of(bus: Bus, user: str) -> dict[str, Any]:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    upserted = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": usd("4.00")},
    )  # fmt: skip
    assert upserted["ok"], upserted
    reply = await bus.call(
        SUB_CREATE,
        {"idempotency_key": key(), "user_id": user, "plan_code": code, "payment_source": "balance"},
    )
    assert reply["ok"], reply
    return reply["data"]["subscription"]  # type: ignore[no-any-return]


def not_found(kind: str, object_id: str) -> dict[str, Any]:
    """The refusal for a missing id, which another user's object must get word for word."""
    details = {"invoice_id": object_id} if kind == "invoice" else {}
    return {"ok": False, "error": {"code": "not_found", "message": f"no {kind} {object_id}",
                                   "details": details}}  # fmt: skip


# --- invoices ---------------------------------------------------------------------------


async def test_another_users_invoice_cannot_be_paid_and_the_refusal_reveals_nothing(
    bus: Bus, worker: Worker
) -> None:
    owner, attacker = new_user("owner"), new_user("attacker")
    await fund(bus, owner, "10.00")
    await fund(bus, attacker, "10.00")
    invoice = await invoice_of(bus, owner)
    missing = str(uuid.uuid4())
    squatted = key()

    async def attack() -> list[dict[str, Any]]:
        return [
            await bus.call(INVOICE_PAY, {"idempotency_key": used, "user_id": attacker,
                                         "invoice_id": ident, "source": "balance"})
            for used, ident in ((squatted, invoice["id"]), (key(), missing))
        ]  # fmt: skip

    foreign, unknown = await unchanged(worker, [owner, attacker], attack)

    assert foreign == not_found("invoice", invoice["id"])
    assert unknown == not_found("invoice", missing)
    assert not bus.events_of("invoice.paid", lambda d: d["invoice_id"] == invoice["id"])
    # the owner pays it, even with the key the attacker used
    paid = await bus.call(
        INVOICE_PAY,
        {"idempotency_key": squatted, "user_id": owner, "invoice_id": invoice["id"],
         "source": "balance"},
    )  # fmt: skip
    assert paid["ok"], paid
    assert paid["data"]["status"] == "paid"
    assert (await balance_of(bus, owner), await balance_of(bus, attacker)) == ("7.00", "10.00")


async def test_another_users_invoice_cannot_be_read_by_id_nor_listed(
    bus: Bus, worker: Worker
) -> None:
    owner, attacker = new_user("owner"), new_user("attacker")
    invoice = await invoice_of(bus, owner)
    missing = str(uuid.uuid4())

    foreign = await bus.call(INVOICE_GET, {"user_id": attacker, "invoice_id": invoice["id"]})
    unknown = await bus.call(INVOICE_GET, {"user_id": attacker, "invoice_id": missing})
    listed = await bus.call(INVOICE_GET, {"user_id": attacker})
    own = await bus.call(INVOICE_GET, {"user_id": owner, "invoice_id": invoice["id"]})

    assert foreign == not_found("invoice", invoice["id"])
    assert unknown == not_found("invoice", missing)
    assert listed == {"ok": True, "data": {"items": [], "next_cursor": None}}
    assert own == {"ok": True, "data": invoice}


# --- subscriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("at_period_end", [True, False], ids=["at_period_end", "now"])
async def test_another_users_subscription_cannot_be_canceled(
    bus: Bus, worker: Worker, at_period_end: bool
) -> None:
    owner, attacker = new_user("owner"), new_user("attacker")
    await fund(bus, owner, "10.00")
    sub = await subscription_of(bus, owner)
    missing = str(uuid.uuid4())
    squatted = key()

    async def attack() -> list[dict[str, Any]]:
        return [
            await bus.call(SUB_CANCEL, {"idempotency_key": used, "user_id": attacker,
                                        "subscription_id": ident, "at_period_end": at_period_end})
            for used, ident in ((squatted, sub["id"]), (key(), missing))
        ]  # fmt: skip

    foreign, unknown = await unchanged(worker, [owner, attacker], attack)

    assert foreign == not_found("subscription", sub["id"])
    assert unknown == not_found("subscription", missing)
    got = await bus.call(SUB_GET, {"user_id": owner, "subscription_id": sub["id"]})
    assert got == {"ok": True, "data": sub}
    await asyncio.sleep(0.5)  # time for a wrongly sent subscription.canceled to show up
    assert not bus.events_of("subscription.canceled", lambda d: d["subscription_id"] == sub["id"])
    # the owner cancels it, even with the key the attacker used
    canceled = await bus.call(
        SUB_CANCEL,
        {"idempotency_key": squatted, "user_id": owner, "subscription_id": sub["id"],
         "at_period_end": at_period_end},
    )  # fmt: skip
    assert canceled["ok"], canceled
    expected = ("active", True) if at_period_end else ("canceled", False)
    assert (canceled["data"]["status"], canceled["data"]["cancel_at_period_end"]) == expected


async def test_another_users_subscription_cannot_be_read_by_id_nor_listed(
    bus: Bus, worker: Worker
) -> None:
    owner, attacker = new_user("owner"), new_user("attacker")
    await fund(bus, owner, "10.00")
    sub = await subscription_of(bus, owner)
    missing = str(uuid.uuid4())

    foreign = await bus.call(SUB_GET, {"user_id": attacker, "subscription_id": sub["id"]})
    unknown = await bus.call(SUB_GET, {"user_id": attacker, "subscription_id": missing})
    listed = await bus.call(SUB_GET, {"user_id": attacker})
    own = await bus.call(SUB_GET, {"user_id": owner})

    assert foreign == not_found("subscription", sub["id"])
    assert unknown == not_found("subscription", missing)
    assert listed == {"ok": True, "data": {"subscriptions": []}}
    assert own == {"ok": True, "data": {"subscriptions": [sub]}}


# --- idempotency keys -------------------------------------------------------------------


async def test_a_deposit_key_used_by_one_user_is_an_ordinary_new_key_for_another(
    bus: Bus, worker: Worker
) -> None:
    first, second = new_user("first"), new_user("second")
    shared = key()
    await fund(bus, first, "5.00", shared)

    await fund(bus, second, "8.00", shared)  # another amount: a conflict if keys were global

    assert (await balance_of(bus, first), await balance_of(bus, second)) == ("5.00", "8.00")
    history = [
        (await bus.call(TRANSACTIONS, {"user_id": user}))["data"]["items"]
        for user in (first, second)
    ]
    assert [len(items) for items in history] == [1, 1]
    assert history[0][0]["id"] != history[1][0]["id"]  # the derived ids include the user
    async with database(worker) as db:
        await assert_ledger_sound(db, [first, second])


async def test_a_squatted_withdrawal_key_does_not_block_the_victims_withdrawal(
    bus: Bus, worker: Worker
) -> None:
    attacker, victim = new_user("attacker"), new_user("victim")
    await fund(bus, victim, "10.00")
    guessed = f"order-{uuid.uuid4().hex[:6]}-withdraw"  # a key the attacker can predict
    withdrawal = {"idempotency_key": guessed, "description": "Pro plan", "amount": usd("4.00")}

    squat = await bus.call(WITHDRAW, {**withdrawal, "user_id": attacker, "amount": usd("1.00")})
    own = await bus.call(WITHDRAW, {**withdrawal, "user_id": victim})
    again = await bus.call(WITHDRAW, {**withdrawal, "user_id": victim})

    assert squat["error"]["code"] == "insufficient_funds"  # recorded for the attacker only
    assert own["ok"], own
    assert own["data"]["balance"] == usd("6.00")
    assert again == own  # still idempotent for the victim
    assert (await balance_of(bus, victim), await balance_of(bus, attacker)) == ("6.00", "none")
    async with database(worker) as db:
        await assert_ledger_sound(db, [attacker, victim])


async def test_two_users_invoices_created_with_one_key_are_two_invoices(bus: Bus) -> None:
    first, second = new_user("first"), new_user("second")
    shared = key()
    line = {"description": "Mug", "quantity": 1, "unit_price": usd("2.00")}
    command = {"idempotency_key": shared, "currency": "USD", "lines": [line]}

    replies = [await bus.call(INVOICE_CREATE, {**command, "user_id": u}) for u in (first, second)]

    assert all(reply["ok"] for reply in replies), replies
    assert [reply["data"]["user_id"] for reply in replies] == [first, second]
    assert replies[0]["data"]["id"] != replies[1]["data"]["id"]
