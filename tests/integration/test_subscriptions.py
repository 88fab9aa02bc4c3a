"""Plans and balance-paid subscriptions over their whole life, on a clock moved by hand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.users import SqlUsers
from billing_worker.domain.calendar import add_months
from billing_worker.jobs.renewals import Renewals
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 31, 9, 30, tzinfo=UTC)  # a month end: Feb 28, Mar 31, Apr 30, ...


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


def key() -> str:
    return uuid.uuid4().hex


async def plan(bus: Bus, price: str = "10.00", **terms: Any) -> str:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": price, "currency": "USD"}, **terms},
    )  # fmt: skip
    assert reply["ok"], reply
    return code


async def fund(bus: Bus, user: str, amount: str) -> None:
    reply = await bus.call(
        "billing.wallet.deposit",
        {
            "idempotency_key": key(),
            "user_id": user,
            "amount": {"amount": amount, "currency": "USD"},
        },
    )
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def subscribe(bus: Bus, user: str, code: str) -> dict[str, Any]:
    return await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code, "payment_source": "balance"},
    )


async def balance(bus: Bus, user: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    return str(reply["data"]["accounts"][0]["balance"]["amount"])


async def subscription(bus: Bus, sub: dict[str, Any]) -> dict[str, Any]:
    reply = await bus.call(
        "billing.subscription.get", {"user_id": sub["user_id"], "subscription_id": sub["id"]}
    )
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


def new_user() -> str:
    return f"sub-user-{uuid.uuid4().hex[:8]}"


def events(bus: Bus, type_: str, sub_id: str) -> list[dict[str, Any]]:
    return bus.events_of(type_, lambda d: d.get("subscription_id") == sub_id)


async def test_a_plan_is_upserted_by_code_and_listed(bus: Bus) -> None:
    code = await plan(bus, "5.00")
    again = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro+", "interval": "year",
         "interval_count": 1, "price": {"amount": "50.00", "currency": "USD"}, "active": False},
    )  # fmt: skip
    assert again["data"]["name"] == "Pro+"
    assert again["data"]["price"] == {"amount": "50.00", "currency": "USD"}
    active = await bus.call("billing.plan.list", {"active_only": True})
    every = await bus.call("billing.plan.list", {"active_only": False})
    assert code not in [p["code"] for p in active["data"]["plans"]]
    assert code in [p["code"] for p in every["data"]["plans"]]


async def test_the_balance_lifecycle_renews_runs_dry_recovers_through_dunning(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "45.00")

    created = await subscribe(bus, user, code)

    sub = created["data"]["subscription"]
    assert sub["status"] == "active"
    assert sub["current_period_start"] == "2031-01-31T09:30:00Z"
    assert sub["current_period_end"] == "2031-02-28T09:30:00Z"
    assert await balance(bus, user) == "35.00"
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub["id"])
    ends = ["2031-03-31T09:30:00Z", "2031-04-30T09:30:00Z", "2031-05-31T09:30:00Z"]
    for expected_end in ends:  # three renewals, anchored to the 31st
        clock.set(datetime.fromisoformat((await subscription(bus, sub))["current_period_end"]))
        assert (await worker.renewals.run_once())["renewed"] == 1
        assert (await subscription(bus, sub))["current_period_end"] == expected_end
    assert await balance(bus, user) == "5.00"
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub["id"], count=3)

    clock.set(datetime.fromisoformat(ends[-1]))
    assert (await worker.renewals.run_once())["failed"] == 1
    assert (await subscription(bus, sub))["status"] == "past_due"
    await bus.event("subscription.past_due", lambda d: d["subscription_id"] == sub["id"])
    await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert await worker.renewals.run_once() == {}  # nothing due before the first retry

    await fund(bus, user, "20.00")
    clock.advance(days=1)
    assert (await worker.renewals.run_once())["renewed"] == 1

    recovered = await subscription(bus, sub)
    assert recovered["status"] == "active"
    assert recovered["current_period_start"] == "2031-05-31T09:30:00Z"  # the unpaid period
    assert recovered["current_period_end"] == "2031-06-30T09:30:00Z"
    assert await balance(bus, user) == "15.00"


async def test_without_funds_no_subscription_is_created(bus: Bus) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "9.99")

    reply = await subscribe(bus, user, code)

    assert reply["error"]["code"] == "insufficient_funds"
    listing = await bus.call("billing.subscription.get", {"user_id": user})
    assert listing["data"]["subscriptions"] == []
    assert await balance(bus, user) == "9.99"


async def test_one_live_subscription_per_user_and_plan(bus: Bus) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "30.00")
    assert (await subscribe(bus, user, code))["ok"]
    second = await subscribe(bus, user, code)
    assert second["error"]["code"] == "invalid_state"
    assert await balance(bus, user) == "20.00"


async def test_cancel_at_period_end_keeps_it_until_the_end_and_charges_nothing_more(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "30.00")
    sub = (await subscribe(bus, user, code))["data"]["subscription"]

    reply = await bus.call(
        "billing.subscription.cancel",
        {
            "idempotency_key": key(),
            "user_id": user,
            "subscription_id": sub["id"],
            "at_period_end": True,
        },
    )

    assert reply["data"]["status"] == "active"
    assert reply["data"]["cancel_at_period_end"] is True
    clock.set(datetime.fromisoformat(sub["current_period_end"]))
    assert (await worker.renewals.run_once())["ended"] == 1
    assert (await subscription(bus, sub))["status"] == "canceled"
    await bus.event("subscription.canceled", lambda d: d["subscription_id"] == sub["id"])
    assert await balance(bus, user) == "20.00"


async def test_cancel_now_ends_it_at_once(bus: Bus) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "10.00")
    sub = (await subscribe(bus, user, code))["data"]["subscription"]

    reply = await bus.call(
        "billing.subscription.cancel",
        {"idempotency_key": key(), "user_id": user, "subscription_id": sub["id"],
         "at_period_end": False, "reason": "moving away"},
    )  # fmt: skip
    again = await bus.call(
        "billing.subscription.cancel",
        {
            "idempotency_key": key(),
            "user_id": user,
            "subscription_id": sub["id"],
            "at_period_end": False,
        },
    )

    assert reply["data"]["status"] == "canceled"
    event = await bus.event("subscription.canceled", lambda d: d["subscription_id"] == sub["id"])
    assert event["data"]["reason"] == "moving away"
    assert again["error"]["code"] == "invalid_state"
    assert (await subscribe(bus, user, code))["error"][
        "code"
    ] == "insufficient_funds"  # may resubscribe


async def test_a_trial_charges_nothing_until_it_ends_then_the_first_period(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus, trial_days=14)
    await fund(bus, user, "10.00")

    sub = (await subscribe(bus, user, code))["data"]["subscription"]

    assert sub["status"] == "trialing"
    assert sub["current_period_end"] == "2031-02-14T09:30:00Z"
    assert await balance(bus, user) == "10.00"
    clock.advance(days=13)
    assert await worker.renewals.run_once() == {}
    clock.advance(days=1)
    assert (await worker.renewals.run_once())["renewed"] == 1
    paid = await subscription(bus, sub)
    assert paid["status"] == "active"
    assert paid["current_period_end"] == "2031-03-14T09:30:00Z"
    assert await balance(bus, user) == "0.00"


async def test_dunning_retries_on_schedule_then_cancels(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "10.00")
    sub = (await subscribe(bus, user, code))["data"]["subscription"]
    period_end = datetime.fromisoformat(sub["current_period_end"])

    outcomes = []
    for day in (0, 1, 3, 5):  # the period end, then BILLING_DUNNING_DAYS 1, 3, 5
        clock.set(period_end + timedelta(days=day))
        outcomes.append(dict(await worker.renewals.run_once()))

    assert outcomes == [{"failed": 1}] * 4
    assert (await subscription(bus, sub))["status"] == "canceled"
    assert len(events(bus, "subscription.past_due", sub["id"])) == 1
    canceled = await bus.event("subscription.canceled", lambda d: d["subscription_id"] == sub["id"])
    assert canceled["data"]["reason"] == "payment_failed"
    await bus.event("payment.failed", lambda d: d["user_id"] == user, count=4)


async def test_two_schedulers_racing_charge_each_period_exactly_once(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    users = [new_user() for _ in range(15)]
    code = await plan(bus, "1.00")
    for user in users:
        await fund(bus, user, "10.00")
    subs = [(await subscribe(bus, user, code))["data"]["subscription"] for user in users]
    rival = Renewals(worker.service, interval_seconds=3600)
    third = Renewals(worker.service, interval_seconds=3600)

    for months in (1, 2, 3):
        clock.set(add_months(START, months))  # Feb 28, Mar 31, Apr 30
        results = await asyncio.gather(
            worker.renewals.run_once(), rival.run_once(), third.run_once()
        )
        # (other tests' subscriptions share the database, so count ours below)
        assert sum(r["renewed"] for r in results) >= len(subs), results
        assert not any(r["error"] for r in results), results

    async with driver_connection(worker.engine) as db:
        counts = await db.fetch(
            "SELECT subscription_id, count(*) AS n, count(DISTINCT period_index) AS periods "
            "FROM subscription_charges WHERE subscription_id = ANY($1::uuid[]) "
            "GROUP BY subscription_id",
            [uuid.UUID(s["id"]) for s in subs],
        )
    assert {(row["n"], row["periods"]) for row in counts} == {(4, 4)}
    assert {await balance(bus, user) for user in users} == {"6.00"}


async def test_the_database_refuses_to_charge_a_period_twice(bus: Bus, worker: Worker) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "10.00")
    sub = (await subscribe(bus, user, code))["data"]["subscription"]
    async with driver_connection(worker.engine) as db:
        import asyncpg

        with pytest.raises(asyncpg.UniqueViolationError):
            await db.execute(
                "INSERT INTO subscription_charges (subscription_id, period_index, period_start, "
                "period_end) VALUES ($1, 0, now(), now())",
                uuid.UUID(sub["id"]),
            )


async def test_a_subscription_that_cannot_be_renewed_does_not_hold_up_the_others(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus, trial_days=7)
    await fund(bus, user, "10.00")
    healthy = (await subscribe(bus, user, code))["data"]["subscription"]
    stuck_user = new_user()
    async with driver_connection(worker.engine) as db:  # a card YooKassa saved for the user
        await db.execute("INSERT INTO billing_users (id, user_id) VALUES ($1, $2)",
                         uuid.uuid4(), stuck_user)  # fmt: skip
        await SqlUsers(db).save_payment_method(stuck_user, "yookassa", "saved-card-1")
    stuck = await bus.call(  # YooKassa is not configured on this worker: renewing it fails
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": stuck_user, "plan_code": code,
         "payment_source": "yookassa", "payment_method_id": "saved-card-1"},
    )  # fmt: skip
    assert stuck["data"]["subscription"]["status"] == "trialing"

    clock.advance(days=7)
    outcomes = await worker.renewals.run_once()

    assert outcomes == {"error": 1, "renewed": 1}
    assert (await subscription(bus, healthy))["status"] == "active"
    assert (await subscription(bus, stuck["data"]["subscription"]))["status"] == "trialing"
