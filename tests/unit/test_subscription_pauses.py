"""Resume, pause, unpause and seats of the subscriptions the worker bills, on the fake
unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from billing_contracts import events as ev
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscription_changes import (
    PauseSubscription,
    ResumeSubscription,
    UnpauseSubscription,
)
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_worker.db.intents import Intent
from billing_worker.domain.calendar import period_boundary
from billing_worker.domain.errors import InsufficientFunds, InvalidInput, InvalidState, NotFound
from billing_worker.handlers import renewals, subscription_changes, subscriptions
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="0")


async def plan(db: FakeDatabase, deps: Deps, price: str = "10.00", currency: str = "USD",
               **extra: Any) -> None:  # fmt: skip
    command = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro",
         "price": money(price, currency), "interval": "month", **extra}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, command, deps)


async def subscribed(
    db: FakeDatabase, deps: Deps, user: str, quantity: int = 1, source: str = "balance"
) -> SubscriptionOut:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source=source,
        quantity=quantity, payment_method_id=None,
    )  # fmt: skip
    created = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(created, SubscriptionCreated)
    return created.subscription


def ids(user: str, sub: uuid.UUID) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "subscription_id": sub}


async def resume(db: FakeDatabase, deps: Deps, user: str, sub: uuid.UUID) -> SubscriptionOut:
    out = await run(db, subscription_changes.resume_subscription,
                    ResumeSubscription(**ids(user, sub)), deps)  # fmt: skip
    assert isinstance(out, SubscriptionOut)
    return out


async def pause(
    db: FakeDatabase, deps: Deps, user: str, sub: uuid.UUID, **extra: Any
) -> SubscriptionOut:
    out = await run(db, subscription_changes.pause_subscription,
                    PauseSubscription(**ids(user, sub), **extra), deps)  # fmt: skip
    assert isinstance(out, SubscriptionOut)
    return out


async def unpause(db: FakeDatabase, deps: Deps, user: str, sub: uuid.UUID) -> SubscriptionOut:
    out = await run(db, subscription_changes.unpause_subscription,
                    UnpauseSubscription(**ids(user, sub)), deps)  # fmt: skip
    assert isinstance(out, SubscriptionOut)
    return out


async def cancel_at_end(db: FakeDatabase, deps: Deps, user: str, sub: uuid.UUID) -> None:
    command = CancelSubscription(**ids(user, sub), at_period_end=True)
    await run(db, subscriptions.cancel_subscription, command, deps)


async def renew(db: FakeDatabase, deps: Deps) -> str | Intent | None:
    return await run(db, renewals.renew_next, [], deps)


# --- resume ------------------------------------------------------------------------------


async def test_resume_undoes_a_period_end_cancel_and_the_period_renews(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "30.00")
    sub = await subscribed(db, deps, user)
    await cancel_at_end(db, deps, user, sub.id)
    out = await resume(db, deps, user, sub.id)
    assert (out.status, out.cancel_at_period_end) == ("active", False)
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert (resumed["subscription_id"], resumed["reason"]) == (str(sub.id), "cancel_undone")
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "renewed"  # not "ended"
    assert await balance_of(db, user) == 1000


async def test_resume_is_refused_without_a_cancel_after_the_period_and_when_ended(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "30.00")
    sub = await subscribed(db, deps, user)
    with pytest.raises(InvalidState):  # not canceling
        await resume(db, deps, user, sub.id)
    await cancel_at_end(db, deps, user, sub.id)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)  # the period is over, the scheduler has not run
    with pytest.raises(InvalidState):
        await resume(db, deps, user, sub.id)
    assert await renew(db, deps) == "ended"
    with pytest.raises(InvalidState):  # canceled: ended for good
        await resume(db, deps, user, sub.id)
    assert db.events_of(ev.SUBSCRIPTION_RESUMED) == []


@pytest.mark.parametrize("change", ["resume", "pause", "unpause"])
async def test_another_users_subscription_is_not_found_like_a_missing_one(
    db: FakeDatabase, deps: Deps, change: str
) -> None:
    owner, other = new_user(), new_user()
    await plan(db, deps)
    await deposit(db, deps, owner, "30.00")
    sub = await subscribed(db, deps, owner)
    await cancel_at_end(db, deps, owner, sub.id)
    handler = getattr(subscription_changes, f"{change}_subscription")
    model = {"resume": ResumeSubscription, "pause": PauseSubscription,
             "unpause": UnpauseSubscription}[change]  # fmt: skip
    with pytest.raises(NotFound) as theirs:
        await run(db, handler, model(**ids(other, sub.id)), deps)
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as nobodys:
        await run(db, handler, model(**ids(owner, missing)), deps)
    assert theirs.value.message.replace(str(sub.id), "X") == nobodys.value.message.replace(
        str(missing), "X"
    )
    assert theirs.value.details == nobodys.value.details
    assert db.state.subscriptions[sub.id].cancel_at_period_end  # unchanged


# --- pause and unpause -------------------------------------------------------------------


async def test_a_pause_serves_the_paid_period_then_nothing_is_charged(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    out = await pause(db, deps, user, sub.id)
    assert (out.status, out.pause_at_period_end) == ("active", True)  # the period is served
    assert db.events_of(ev.SUBSCRIPTION_PAUSED) == []
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "paused"
    row = db.state.subscriptions[sub.id]
    assert (row.status, row.pause_at_period_end) == ("paused", False)
    [paused] = db.events_of(ev.SUBSCRIPTION_PAUSED)
    assert paused["status"] == "paused"
    clock.advance(days=400)  # a year on: no renewal, no dunning
    assert await renew(db, deps) is None
    assert await balance_of(db, user) == 4000  # the first period only
    assert db.state.subscriptions[sub.id].status == "paused"


async def test_unpause_starts_a_new_period_now_and_charges_it(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    await pause(db, deps, user, sub.id)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    await renew(db, deps)
    unpaused_at = clock.advance(days=45, hours=3)
    out = await unpause(db, deps, user, sub.id)
    assert out.status == "active"
    assert out.current_period_start == unpaused_at  # re-anchored at the unpause
    assert out.current_period_end == period_boundary(unpaused_at, "month", 1, 1)
    assert await balance_of(db, user) == 3000  # charged at once
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert resumed["reason"] == "unpaused"
    renewed = db.events_of(ev.SUBSCRIPTION_RENEWED)
    assert [r["current_period_start"] for r in renewed] == [
        unpaused_at.isoformat().replace("+00:00", "Z")
    ]
    assert len(db.state.charges) == 2
    assert await renew(db, deps) is None  # the new period is paid
    assert out.current_period_end is not None
    clock.set(out.current_period_end)  # and the next one renews on the new anchor
    assert await renew(db, deps) == "renewed"
    row = db.state.subscriptions[sub.id]
    assert row.current_period_start == out.current_period_end
    assert await balance_of(db, user) == 2000


async def test_unpause_without_the_money_is_refused_and_it_stays_paused(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "15.00")
    sub = await subscribed(db, deps, user)
    await pause(db, deps, user, sub.id)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    await renew(db, deps)
    with pytest.raises(InsufficientFunds) as refused:
        await unpause(db, deps, user, sub.id)
    assert refused.value.details["price"] == money("10.00")
    assert db.state.subscriptions[sub.id].status == "paused"
    assert db.events_of(ev.SUBSCRIPTION_RESUMED) == []
    assert await balance_of(db, user) == 500


async def test_unpause_before_the_period_end_drops_the_pause(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    await pause(db, deps, user, sub.id)
    out = await unpause(db, deps, user, sub.id)
    assert (out.status, out.pause_at_period_end) == ("active", False)
    assert out.current_period_end == sub.current_period_end  # no new anchor, no charge
    assert await balance_of(db, user) == 4000
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert resumed["reason"] == "pause_dropped"
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "renewed"


async def test_until_unpauses_by_itself_and_the_scheduler_charges_then(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    assert sub.current_period_end is not None
    until = sub.current_period_end + timedelta(days=20)
    out = await pause(db, deps, user, sub.id, until=until)
    assert out.paused_until == until
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "paused"
    clock.set(until - timedelta(seconds=1))
    assert await renew(db, deps) is None
    round_at = clock.set(until + timedelta(minutes=5))  # the scheduler's next round
    assert await renew(db, deps) == "renewed"
    row = db.state.subscriptions[sub.id]
    assert (row.status, row.paused_until, row.current_period_start) == ("active", None, round_at)
    assert await balance_of(db, user) == 3000
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert resumed["reason"] == "pause_ended"


async def test_until_with_the_balance_short_goes_past_due_as_a_renewal_would(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "10.00")
    sub = await subscribed(db, deps, user)
    assert sub.current_period_end is not None
    await pause(db, deps, user, sub.id, until=sub.current_period_end + timedelta(days=3))
    clock.set(sub.current_period_end)
    await renew(db, deps)
    clock.advance(days=4)
    assert await renew(db, deps) == "failed"
    assert db.state.subscriptions[sub.id].status == "past_due"


async def test_until_must_be_after_the_pause_takes_effect(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    with pytest.raises(InvalidInput):
        await pause(db, deps, user, sub.id, until=clock.now + timedelta(days=3))
    assert not db.state.subscriptions[sub.id].pause_at_period_end


async def test_a_past_due_subscription_pauses_at_once_and_dunning_stops(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "10.00")
    sub = await subscribed(db, deps, user)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "failed"
    out = await pause(db, deps, user, sub.id)
    assert out.status == "paused"
    assert len(db.events_of(ev.SUBSCRIPTION_PAUSED)) == 1
    clock.advance(days=30)  # past every dunning retry
    assert await renew(db, deps) is None
    assert db.state.subscriptions[sub.id].status == "paused"  # not canceled by dunning
    await deposit(db, deps, user, "10.00")
    out = await unpause(db, deps, user, sub.id)
    assert (out.status, out.current_period_start) == ("active", clock.now)
    assert await balance_of(db, user) == 0  # the new period; the unpaid one is not charged


async def test_pausing_twice_a_canceling_or_ended_one_is_invalid_state(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    await pause(db, deps, user, sub.id)
    with pytest.raises(InvalidState):
        await pause(db, deps, user, sub.id)
    await unpause(db, deps, user, sub.id)
    with pytest.raises(InvalidState):  # not paused, no pause scheduled
        await unpause(db, deps, user, sub.id)
    await cancel_at_end(db, deps, user, sub.id)
    with pytest.raises(InvalidState):
        await pause(db, deps, user, sub.id)


async def test_a_paused_subscription_is_live_and_a_cancel_ends_it_at_once(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps)
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    await pause(db, deps, user, sub.id)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    await renew(db, deps)
    with pytest.raises(InvalidState):  # one live subscription per user and plan
        await subscribed(db, deps, user)
    await cancel_at_end(db, deps, user, sub.id)  # at_period_end: the period is over
    assert db.state.subscriptions[sub.id].status == "canceled"


async def test_a_yookassa_unpause_is_due_at_once_and_the_scheduler_charges_the_card(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps, trial_days=7)  # a trial: no first payment to settle here
    sub = await subscribed(db, deps, user, source="yookassa")
    await pause(db, deps, user, sub.id)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "paused"
    clock.advance(days=3)
    out = await unpause(db, deps, user, sub.id)
    assert (out.status, out.current_period_end) == ("active", clock.now)  # due now
    assert db.state.subscriptions[sub.id].restarts == 1
    assert await renew(db, deps) == "failed"  # charged now (no saved card here: dunning)
    assert db.state.subscriptions[sub.id].status == "past_due"


# --- seats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "currency", "quantity", "minor"),
    [("1234", "JPY", 3, 3702), ("9.99", "USD", 3, 2997), ("1.234", "KWD", 7, 8638)],
)
async def test_each_period_charges_price_times_quantity_in_exact_minor_units(
    db: FakeDatabase, deps: Deps, clock: ManualClock,
    price: str, currency: str, quantity: int, minor: int,
) -> None:  # fmt: skip
    user = new_user()
    await plan(db, deps, price, currency)
    funds = {"JPY": "100000", "USD": "1000.00", "KWD": "100.000"}[currency]
    await deposit(db, deps, user, funds, currency)
    start = await balance_of(db, user, currency)
    assert start is not None
    sub = await subscribed(db, deps, user, quantity=quantity)
    assert sub.quantity == quantity
    assert await balance_of(db, user, currency) == start - minor
    [created] = db.events_of(ev.SUBSCRIPTION_CREATED)
    assert created["quantity"] == quantity
    assert created["amount"]["currency"] == currency
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await renew(db, deps) == "renewed"
    assert await balance_of(db, user, currency) == start - 2 * minor
    [renewed] = db.events_of(ev.SUBSCRIPTION_RENEWED)
    assert renewed["amount"] == created["amount"]
    charges = [t for t in db.state.transactions.values() if t.kind == "subscription_charge"]
    assert sorted(t.amount_minor for t in charges) == [minor, minor]


async def test_without_money_for_every_seat_nothing_is_created(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await plan(db, deps, "10.00")
    await deposit(db, deps, user, "29.99")
    with pytest.raises(InsufficientFunds) as refused:
        await subscribed(db, deps, user, quantity=3)
    assert refused.value.details["price"] == money("30.00")
    assert db.state.subscriptions == {}


async def test_a_price_times_quantity_beyond_a_bigint_is_invalid(
    db: FakeDatabase, deps: Deps
) -> None:
    await plan(db, deps, "92233720368547758.07")
    with pytest.raises(InvalidInput):
        await subscribed(db, deps, new_user(), quantity=2)


@pytest.mark.parametrize("quantity", [0, -1, 10_001, "3", True, 1.5])
def test_quantity_is_a_whole_number_from_1_to_10000(quantity: Any) -> None:
    with pytest.raises(ValidationError):
        CreateSubscription.model_validate(
            {"idempotency_key": "k", "user_id": "u", "plan_code": "pro",
             "payment_source": "balance", "quantity": quantity}
        )  # fmt: skip
    default = CreateSubscription.model_validate(
        {"idempotency_key": "k", "user_id": "u", "plan_code": "pro", "payment_source": "balance"}
    )
    assert default.quantity == 1
