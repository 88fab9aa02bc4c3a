"""The wallet end to end: messages in through RabbitMQ, a real worker, replies and events out."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from billing_worker.app import Worker
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT, WITHDRAW = "billing.wallet.deposit", "billing.wallet.withdraw"
BALANCE, TRANSACTIONS = "billing.wallet.balance", "billing.wallet.transactions"


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


async def fund(bus: Bus, user: str, amount: str, currency: str = "USD") -> None:
    reply = await bus.call(
        DEPOSIT,
        {
            "idempotency_key": key(),
            "user_id": user,
            "amount": {"amount": amount, "currency": currency},
        },
    )
    assert reply["ok"], reply
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def balance_of(bus: Bus, user: str, currency: str = "USD") -> str:
    reply = await bus.call(BALANCE, {"user_id": user, "currency": currency})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def withdraw(
    bus: Bus, user: str, amount: str, idempotency_key: str | None = None
) -> dict[str, Any]:
    return await bus.call(
        WITHDRAW,
        {
            "idempotency_key": idempotency_key or key(),
            "user_id": user,
            "amount": usd(amount),
            "description": "test purchase",
        },
    )


async def test_a_sandbox_deposit_replies_processing_then_completes_and_shows_in_the_balance(
    bus: Bus,
) -> None:
    user = new_user()
    reply = await bus.call(
        DEPOSIT,
        {"idempotency_key": key(), "user_id": user, "amount": usd("25.50"), "provider": "sandbox"},
    )

    assert reply["ok"] is True
    transaction = reply["data"]["transaction"]
    assert transaction["status"] == "processing"
    assert transaction["kind"] == "deposit"
    assert transaction["amount"] == usd("25.50")
    assert transaction["provider"] == "sandbox"
    completed = await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert completed["data"]["amount"] == usd("25.50")
    assert completed["data"]["balance"] == usd("25.50")
    assert completed["version"] == 1
    success = await bus.event("payment.success", lambda d: d["transaction_id"] == transaction["id"])
    assert success["data"]["status"] == "completed"
    assert await balance_of(bus, user) == "25.50"
    history = await bus.call(TRANSACTIONS, {"user_id": user})
    assert [item["status"] for item in history["data"]["items"]] == ["completed"]


async def test_events_carry_the_envelope_and_amqp_properties_of_the_contract(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "5.00")
    [message] = bus.events.matching(
        lambda m: m.routing_key == "deposit.completed" and user.encode() in m.body
    )
    import json

    envelope = json.loads(message.body)
    assert set(envelope) == {"event_id", "type", "pattern", "occurred_at", "version", "data"}
    assert envelope["pattern"] == envelope["type"] == "deposit.completed"  # for NestJS
    assert message.message_id == envelope["event_id"]
    assert message.type == "deposit.completed"
    assert message.delivery_mode == 2
    assert envelope["occurred_at"].endswith("Z")


async def test_a_withdrawal_beyond_the_balance_is_insufficient_funds_and_changes_nothing(
    bus: Bus,
) -> None:
    user = new_user()
    await fund(bus, user, "10.00")

    reply = await withdraw(bus, user, "10.01")

    assert reply["ok"] is False
    assert reply["error"]["code"] == "insufficient_funds"
    assert reply["error"]["details"]["balance"] == usd("10.00")
    assert await balance_of(bus, user) == "10.00"
    history = await bus.call(TRANSACTIONS, {"user_id": user})
    assert [item["kind"] for item in history["data"]["items"]] == ["deposit"]


async def test_a_withdrawal_from_a_user_without_an_account_is_insufficient_funds(bus: Bus) -> None:
    reply = await withdraw(bus, new_user(), "1.00")
    assert reply["error"]["code"] == "insufficient_funds"


async def test_a_withdrawal_debits_the_balance_and_announces_it(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "20.00")

    reply = await withdraw(bus, user, "7.25")

    assert reply["ok"], reply
    assert reply["data"]["balance"] == usd("12.75")
    assert reply["data"]["transaction"]["status"] == "completed"
    assert reply["data"]["transaction"]["completed_at"] is not None
    event = await bus.event("withdrawal.completed", lambda d: d["user_id"] == user)
    assert event["data"]["balance"] == usd("12.75")
    assert event["data"]["description"] == "test purchase"


async def test_200_concurrent_withdrawals_of_1_against_50_let_exactly_50_through(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "50.00")

    replies = await asyncio.gather(*(withdraw(bus, user, "1.00") for _ in range(200)))

    succeeded = [r for r in replies if r["ok"]]
    refused = [r for r in replies if not r["ok"]]
    assert len(succeeded) == 50
    assert {r["error"]["code"] for r in refused} == {"insufficient_funds"}
    assert await balance_of(bus, user) == "0.00"
    balances_after = sorted(r["data"]["balance"]["amount"] for r in succeeded)
    assert balances_after == sorted(f"{n}.00" for n in range(50))  # no lost update


async def test_the_same_key_and_payload_returns_the_first_reply_and_applies_once(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "10.00")
    same = key()

    first = await withdraw(bus, user, "3.00", idempotency_key=same)
    again = await withdraw(bus, user, "3.00", idempotency_key=same)
    together = await asyncio.gather(
        *(withdraw(bus, user, "3.00", idempotency_key=same) for _ in range(10))
    )

    assert first["ok"]
    assert again == first
    assert all(reply == first for reply in together)
    assert await balance_of(bus, user) == "7.00"
    history = await bus.call(TRANSACTIONS, {"user_id": user})
    assert [item["kind"] for item in history["data"]["items"]] == ["withdrawal", "deposit"]


async def test_a_refusal_is_remembered_for_its_key_too(bus: Bus) -> None:
    user = new_user()
    same = key()
    first = await withdraw(bus, user, "3.00", idempotency_key=same)
    await fund(bus, user, "10.00")
    again = await withdraw(bus, user, "3.00", idempotency_key=same)
    assert first["error"]["code"] == "insufficient_funds"
    assert again == first
    assert await balance_of(bus, user) == "10.00"


async def test_the_same_key_with_another_payload_is_an_idempotency_conflict(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "10.00")
    same = key()

    first = await withdraw(bus, user, "3.00", idempotency_key=same)
    other = await withdraw(bus, user, "4.00", idempotency_key=same)

    assert first["ok"]
    assert other["ok"] is False
    assert other["error"]["code"] == "idempotency_conflict"
    assert await balance_of(bus, user) == "7.00"


async def test_a_redelivered_deposit_creates_one_transaction_and_one_completion(bus: Bus) -> None:
    user = new_user()
    command = {"idempotency_key": key(), "user_id": user, "amount": usd("4.00")}

    first, second = await bus.call(DEPOSIT, command), await bus.call(DEPOSIT, command)

    assert second == first
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    await asyncio.sleep(0.5)  # give a duplicate completion the time to show up
    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 1
    assert await balance_of(bus, user) == "4.00"


async def test_a_declined_sandbox_payment_fails_the_transaction_and_publishes_payment_failed(
    bus: Bus,
) -> None:
    user = new_user()
    reply = await bus.call(
        DEPOSIT,
        {
            "idempotency_key": key(),
            "user_id": user,
            "amount": usd("9.99"),
            "provider": "sandbox",
            "payment_method_id": "pm_card_chargeDeclined",
        },
    )
    assert reply["data"]["transaction"]["status"] == "processing"

    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)

    assert failed["data"]["failure_code"] == "card_declined"
    assert failed["data"]["status"] == "failed"
    assert await balance_of(bus, user) == "0.00"
    history = await bus.call(TRANSACTIONS, {"user_id": user})
    assert history["data"]["items"][0]["status"] == "failed"
    assert not bus.events_of("deposit.completed", lambda d: d["user_id"] == user)


async def test_balance_low_is_sent_once_per_crossing_and_re_armed_above_the_threshold(
    bus: Bus,
) -> None:
    user = new_user()
    await fund(bus, user, "30.00")
    for amount in ("15.00", "6.00", "1.00"):  # 15.00 (above), 9.00 (crosses), 8.00 (still low)
        assert (await withdraw(bus, user, amount))["ok"]
    await bus.event("balance.low", lambda d: d["user_id"] == user)
    await fund(bus, user, "20.00")  # 28.00: re-armed
    assert (await withdraw(bus, user, "20.00"))["ok"]  # 8.00: crosses again

    await bus.event("balance.low", lambda d: d["user_id"] == user, count=2)
    await asyncio.sleep(0.5)
    lows = bus.events_of("balance.low", lambda d: d["user_id"] == user)
    assert [low["data"]["balance"]["amount"] for low in lows] == ["9.00", "8.00"]
    assert lows[0]["data"]["threshold"] == usd("10.00")


async def test_transactions_are_paged_newest_first_with_a_cursor(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "10.00")
    for amount in ("1.00", "2.00", "3.00"):
        await withdraw(bus, user, amount)

    first = await bus.call(TRANSACTIONS, {"user_id": user, "limit": 2})
    second = await bus.call(
        TRANSACTIONS, {"user_id": user, "limit": 2, "cursor": first["data"]["next_cursor"]}
    )

    amounts = [i["amount"]["amount"] for i in first["data"]["items"] + second["data"]["items"]]
    assert amounts == ["3.00", "2.00", "1.00", "10.00"]
    assert second["data"]["next_cursor"] is None


async def test_a_forged_cursor_is_refused_as_invalid_message(bus: Bus) -> None:
    reply = await bus.call(TRANSACTIONS, {"user_id": new_user(), "cursor": "not-a-cursor"})
    assert reply["error"]["code"] == "invalid_message"


async def test_balances_are_kept_per_currency(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "5.00", "USD")
    await fund(bus, user, "700", "JPY")
    reply = await bus.call(BALANCE, {"user_id": user})
    assert reply["data"] == {
        "user_id": user,
        "accounts": [
            {
                "currency": "JPY",
                "balance": {"amount": "700", "currency": "JPY"},
                "available": {"amount": "700", "currency": "JPY"},
            },
            {
                "currency": "USD",
                "balance": {"amount": "5.00", "currency": "USD"},
                "available": {"amount": "5.00", "currency": "USD"},
            },
        ],
    }


async def test_concurrent_balance_queries_each_get_their_own_users_accounts(
    bus: Bus, worker: Worker
) -> None:
    """Balance queries answered together (coalesced, one round trip) keep each query's
    user, currency filter and accounts apart."""
    users = [new_user() for _ in range(6)]
    for n, user in enumerate(users):
        await fund(bus, user, f"{n + 1}.00", "USD")
        if n % 2:
            await fund(bus, user, f"{n + 1}00", "JPY")
    route = next(r for r in worker.routes if r.queue == BALANCE)
    batches = route.coalescer.batches
    asks = [(user, currency) for user in users for currency in ("USD", "JPY", None)] * 4
    replies = await asyncio.gather(
        *(bus.call(BALANCE, {"user_id": u} | ({"currency": c} if c else {})) for u, c in asks)
    )
    for (user, currency), reply in zip(asks, replies, strict=True):
        n = users.index(user)
        expected = {"USD": f"{n + 1}.00"} | ({"JPY": f"{n + 1}00"} if n % 2 else {})
        if currency is not None:
            expected = {k: v for k, v in expected.items() if k == currency}
        assert reply["ok"], reply
        assert reply["data"]["user_id"] == user
        got = {a["currency"]: a["balance"]["amount"] for a in reply["data"]["accounts"]}
        assert got == expected, (user, currency, reply)
    assert route.coalescer.batches - batches < len(asks), "no two queries were answered together"
