"""Resume, pause, unpause and seats of balance subscriptions, over RabbitMQ on the real
PostgreSQL, on a clock moved by hand (the renewal scheduler's due query included)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_contracts.client import BillingClient, InvalidState
from billing_contracts.subscriptions import SubscriptionStatus
from billing_worker.app import Worker, build_worker
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus
from support.subscription_kit import balance, fund, key, plan, subscribe

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 31, 9, 30, tzinfo=UTC)


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the renewal scheduler renews every due subscription."""
    return fresh_database_url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def new_user() -> str:
    return f"pause-user-{uuid.uuid4().hex[:8]}"


async def change(bus: Bus, verb: str, user: str, sub_id: str, **extra: Any) -> dict[str, Any]:
    return await bus.call(
        f"billing.subscription.{verb}",
        {"idempotency_key": extra.pop("idempotency_key", key()), "user_id": user,
         "subscription_id": sub_id, **extra},
    )  # fmt: skip


async def current(bus: Bus, user: str, sub_id: str) -> dict[str, Any]:
    reply = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wire(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_resume_after_a_period_end_cancel_keeps_it_renewing(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "30.00")
    sub = await subscribe(bus, user, code)
    canceled = await change(bus, "cancel", user, sub["id"], at_period_end=True)
    assert canceled["data"]["cancel_at_period_end"] is True

    resumed = await change(bus, "resume", user, sub["id"])

    assert resumed["ok"], resumed
    assert (resumed["data"]["status"], resumed["data"]["cancel_at_period_end"]) == (
        "active", False,
    )  # fmt: skip
    event = await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub["id"])
    assert event["data"]["reason"] == "cancel_undone"
    clock.set(at(sub["current_period_end"]))
    assert (await worker.renewals.run_once())["renewed"] == 1
    assert await balance(bus, user) == "10.00"
    again = await change(bus, "resume", user, sub["id"])  # nothing to undo any more
    assert again["error"]["code"] == "invalid_state"


async def test_a_paused_subscription_is_skipped_by_the_scheduler_and_unpause_charges_it(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "50.00")
    sub = await subscribe(bus, user, code)
    paused = await change(bus, "pause", user, sub["id"])
    assert (paused["data"]["status"], paused["data"]["pause_at_period_end"]) == ("active", True)

    clock.set(at(sub["current_period_end"]))
    assert (await worker.renewals.run_once())["paused"] == 1
    assert (await current(bus, user, sub["id"]))["status"] == "paused"
    await bus.event("subscription.paused", lambda d: d["subscription_id"] == sub["id"])
    second = await bus.call(  # paused is live: the database's one-live index counts it
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "balance"},
    )  # fmt: skip
    assert second["error"]["code"] == "invalid_state"
    clock.advance(days=200)  # long past the period end and any dunning: nothing is due
    assert await worker.renewals.run_once() == {}
    assert await balance(bus, user) == "40.00"

    unpaused_at = clock.advance(hours=5)
    unpaused = await change(bus, "unpause", user, sub["id"])

    assert unpaused["ok"], unpaused
    data = unpaused["data"]
    assert (data["status"], data["current_period_start"]) == ("active", wire(unpaused_at))
    assert data["current_period_end"] == wire(datetime(2031, 10, 16, 14, 30, tzinfo=UTC))
    assert await balance(bus, user) == "30.00"  # the new period, charged at the unpause
    await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub["id"])
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub["id"])
    assert await worker.renewals.run_once() == {}  # paid: nothing due
    clock.set(at(data["current_period_end"]))
    assert (await worker.renewals.run_once())["renewed"] == 1  # on the new anchor
    assert (await current(bus, user, sub["id"]))["current_period_start"] == data[
        "current_period_end"
    ]


async def test_until_unpauses_it_by_itself_and_the_scheduler_charges_the_period(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "50.00")
    sub = await subscribe(bus, user, code)
    until = at(sub["current_period_end"]) + timedelta(days=10)
    paused = await change(bus, "pause", user, sub["id"], until=wire(until))
    assert paused["data"]["paused_until"] == wire(until)
    clock.set(at(sub["current_period_end"]))
    assert (await worker.renewals.run_once())["paused"] == 1
    clock.set(until - timedelta(minutes=1))
    assert await worker.renewals.run_once() == {}

    clock.set(until)
    assert (await worker.renewals.run_once())["renewed"] == 1

    now = await current(bus, user, sub["id"])
    assert (now["status"], now["paused_until"], now["current_period_start"]) == (
        "active", None, wire(until),
    )  # fmt: skip
    assert await balance(bus, user) == "30.00"
    event = await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub["id"])
    assert event["data"]["reason"] == "pause_ended"


async def test_another_users_subscription_is_not_found_for_every_change(
    bus: Bus, worker: Worker
) -> None:
    owner, other, code = new_user(), new_user(), await plan(bus)
    await fund(bus, owner, "30.00")
    sub = await subscribe(bus, owner, code)
    missing = str(uuid.uuid4())
    for verb in ("resume", "pause", "unpause"):
        theirs = await change(bus, verb, other, sub["id"])
        nobodys = await change(bus, verb, owner, missing)
        assert theirs["error"]["code"] == nobodys["error"]["code"] == "not_found"
        assert theirs["error"]["message"].replace(sub["id"], "X") == nobodys["error"][
            "message"
        ].replace(missing, "X")
    assert (await current(bus, owner, sub["id"]))["pause_at_period_end"] is False


@pytest.mark.parametrize(
    ("price", "currency", "funds", "left"),
    [("1234", "JPY", "10000", "6298"), ("9.99", "USD", "100.00", "70.03"),
     ("1.234", "KWD", "10.000", "6.298")],
)  # fmt: skip
async def test_seats_charge_price_times_quantity_in_exact_minor_units(
    bus: Bus, worker: Worker, price: str, currency: str, funds: str, left: str
) -> None:
    user, code = new_user(), await plan(bus, price, currency)
    await fund(bus, user, funds, currency)

    sub = await subscribe(bus, user, code, quantity=3)

    assert sub["quantity"] == 3
    assert await balance(bus, user, currency) == left
    created = await bus.event("subscription.created", lambda d: d["subscription_id"] == sub["id"])
    assert created["data"]["quantity"] == 3
    charged = {"JPY": "3702", "USD": "29.97", "KWD": "3.702"}[currency]
    assert created["data"]["amount"] == {"amount": charged, "currency": currency}


async def test_retries_of_every_change_replay_the_first_reply(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "50.00")
    sub = await subscribe(bus, user, code)
    pause_key, unpause_key = key(), key()
    first = await change(bus, "pause", user, sub["id"], idempotency_key=pause_key)
    retry = await change(bus, "pause", user, sub["id"], idempotency_key=pause_key)
    assert retry == first
    clock.set(at(sub["current_period_end"]))
    await worker.renewals.run_once()
    first = await change(bus, "unpause", user, sub["id"], idempotency_key=unpause_key)
    retry = await change(bus, "unpause", user, sub["id"], idempotency_key=unpause_key)
    assert first["ok"], first
    assert retry == first
    assert await balance(bus, user) == "30.00"  # one charge for the unpause, not two
    conflict = await change(bus, "pause", user, sub["id"], idempotency_key=pause_key,
                            until="2032-01-01T00:00:00Z")  # fmt: skip
    assert conflict["error"]["code"] == "idempotency_conflict"


async def test_the_typed_client_resumes_pauses_and_unpauses(
    bus: Bus, worker: Worker, clock: ManualClock, rabbitmq_url: str
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "50.00")
    async with BillingClient(rabbitmq_url, timeout=15, connection_name="pause-client") as billing:
        created = await billing.create_subscription(
            user_id=user, plan_code=code, payment_source="balance", quantity=2,
            idempotency_key=key(),
        )  # fmt: skip
        sub = created.subscription
        assert sub.quantity == 2
        await billing.cancel_subscription(user_id=user, subscription_id=sub.id,
                                          idempotency_key=key())  # fmt: skip
        resumed = await billing.resume_subscription(
            user_id=user, subscription_id=sub.id, idempotency_key=key()
        )
        assert resumed.cancel_at_period_end is False
        with pytest.raises(InvalidState):
            await billing.resume_subscription(
                user_id=user, subscription_id=sub.id, idempotency_key=key()
            )
        pausing = await billing.pause_subscription(
            user_id=user, subscription_id=str(sub.id), idempotency_key=key()
        )
        assert (pausing.status, pausing.pause_at_period_end) == (SubscriptionStatus.ACTIVE, True)
        assert sub.current_period_end is not None
        clock.set(sub.current_period_end)
        await worker.renewals.run_once()
        unpaused = await billing.unpause_subscription(
            user_id=user, subscription_id=sub.id, idempotency_key=key()
        )
        assert (unpaused.status, unpaused.current_period_start) == (
            SubscriptionStatus.ACTIVE, clock.now,
        )  # fmt: skip
        assert (await billing.balance(user_id=user)).accounts[0].balance.amount == "10.00"
