"""Plans, subscriptions and renewals on the fake unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.plans import ListPlans, UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
)
from billing_worker.db.intents import Intent
from billing_worker.domain.errors import InsufficientFunds, InvalidState, NotFound
from billing_worker.domain.ledger import Transaction
from billing_worker.handlers import renewals, subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import period_charge
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run, wire


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="0")


def a_plan(code: str = "pro", price: str = "10.00", **extra: Any) -> UpsertPlan:
    return UpsertPlan.model_validate(
        {
            "idempotency_key": key(),
            "code": code,
            "name": code.title(),
            "price": money(price),
            "interval": "month",
            **extra,
        }
    )


def subscribe(user: str, plan: str = "pro") -> CreateSubscription:
    return CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code=plan, payment_source="balance"
    )


def cancel(user: str, sub: uuid.UUID, *, at_period_end: bool) -> CancelSubscription:
    return CancelSubscription(
        idempotency_key=key(), user_id=user, subscription_id=sub, at_period_end=at_period_end
    )


async def subscribed(db: FakeDatabase, deps: Deps, user: str, plan: str = "pro") -> SubscriptionOut:
    created = await run(db, subscriptions.create_subscription, subscribe(user, plan), deps)
    assert isinstance(created, SubscriptionCreated)
    return created.subscription


async def test_a_plan_is_upserted_by_code_and_listed(db: FakeDatabase, deps: Deps) -> None:
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00"), deps)
    updated = await run(db, subscriptions.upsert_plan, a_plan("pro", "12.00"), deps)
    await run(db, subscriptions.upsert_plan, a_plan("old", active=False), deps)
    await run(db, subscriptions.upsert_plan, a_plan("basic", "0"), deps)
    assert updated.price == wire("12.00")
    active = await run(db, subscriptions.list_plans, ListPlans(), deps)
    assert [(p.code, p.price) for p in active.plans] == [
        ("basic", wire("0.00")),
        ("pro", wire("12.00")),
    ]
    every = await run(db, subscriptions.list_plans, ListPlans(active_only=False), deps)
    assert [p.code for p in every.plans] == ["basic", "old", "pro"]


async def test_a_balance_subscription_is_charged_and_active_at_once(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00"), deps)
    await deposit(db, deps, user, "25.00")
    sub = await subscribed(db, deps, user)
    assert (sub.status, sub.current_period_start) == ("active", clock.now)
    assert sub.current_period_end is not None
    assert sub.current_period_end > clock.now
    assert await balance_of(db, user) == 1500
    [created] = db.events_of(ev.SUBSCRIPTION_CREATED)
    assert (created["subscription_id"], created["amount"]) == (str(sub.id), money("10.00"))


@pytest.mark.parametrize("active", [None, False])
async def test_an_unknown_or_inactive_plan_is_not_found(
    db: FakeDatabase, deps: Deps, active: bool | None
) -> None:
    if active is not None:
        await run(db, subscriptions.upsert_plan, a_plan("pro", active=active), deps)
    with pytest.raises(NotFound):
        await run(db, subscriptions.create_subscription, subscribe(new_user()), deps)
    assert db.state.subscriptions == {}


async def test_without_funds_no_subscription_is_created(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00"), deps)
    await deposit(db, deps, user, "9.99")
    with pytest.raises(InsufficientFunds) as refused:
        await run(db, subscriptions.create_subscription, subscribe(user), deps)
    assert refused.value.details["price"] == money("10.00")
    assert db.state.subscriptions == {}
    assert await balance_of(db, user) == 999


async def test_one_live_subscription_per_user_and_plan(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await run(db, subscriptions.upsert_plan, a_plan("team", "1.00"), deps)
    await deposit(db, deps, user, "10.00")
    first = await subscribed(db, deps, user)
    with pytest.raises(InvalidState):
        await run(db, subscriptions.create_subscription, subscribe(user), deps)
    await subscribed(db, deps, user, "team")  # another plan is fine
    await run(
        db, subscriptions.cancel_subscription, cancel(user, first.id, at_period_end=False), deps
    )
    await subscribed(db, deps, user)  # and so is the same plan once the first has ended
    assert await balance_of(db, user) == 700


async def test_a_trial_charges_nothing_until_it_ends(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00", trial_days=14), deps)
    sub = await subscribed(db, deps, user)
    assert (sub.status, sub.current_period_end) == ("trialing", clock.now + timedelta(days=14))
    assert db.state.transactions == {}
    assert len(db.events_of(ev.SUBSCRIPTION_CREATED)) == 1


async def test_a_free_plan_is_active_without_moving_money(db: FakeDatabase, deps: Deps) -> None:
    await run(db, subscriptions.upsert_plan, a_plan("free", "0"), deps)
    sub = await subscribed(db, deps, new_user(), "free")
    assert sub.status == "active"
    assert db.state.transactions == {}


async def test_cancel_at_period_end_keeps_it_until_the_end_then_renewal_ends_it(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00"), deps)
    await deposit(db, deps, user, "30.00")
    sub = await subscribed(db, deps, user)
    out = await run(
        db, subscriptions.cancel_subscription, cancel(user, sub.id, at_period_end=True), deps
    )
    assert isinstance(out, SubscriptionOut)
    assert (out.status, out.cancel_at_period_end) == ("active", True)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await run(db, renewals.renew_next, [], deps) == "ended"
    assert db.state.subscriptions[sub.id].status == "canceled"
    assert await balance_of(db, user) == 2000  # the first period only


async def test_cancel_now_ends_it_at_once_and_announces_it(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await deposit(db, deps, user, "5.00")
    sub = await subscribed(db, deps, user)
    command = cancel(user, sub.id, at_period_end=False)
    out = await run(db, subscriptions.cancel_subscription, command, deps)
    assert isinstance(out, SubscriptionOut)
    assert out.status == "canceled"
    assert [e["subscription_id"] for e in db.events_of(ev.SUBSCRIPTION_CANCELED)] == [str(sub.id)]
    for at_period_end in (False, True):  # already ended, whenever it was asked to end
        with pytest.raises(InvalidState, match="already canceled"):
            await run(
                db,
                subscriptions.cancel_subscription,
                cancel(user, sub.id, at_period_end=at_period_end),
                deps,
            )
    assert db.state.subscriptions[sub.id].cancel_at_period_end is False
    assert len(db.events_of(ev.SUBSCRIPTION_CANCELED)) == 1


async def test_another_users_subscription_is_not_found_like_an_unknown_one(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, other = new_user(), new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await deposit(db, deps, owner, "5.00")
    sub = await subscribed(db, deps, owner)
    for sub_id in (sub.id, uuid.uuid4()):
        with pytest.raises(NotFound):
            await run(
                db,
                subscriptions.cancel_subscription,
                cancel(other, sub_id, at_period_end=False),
                deps,
            )
        with pytest.raises(NotFound):
            await run(
                db,
                subscriptions.get_subscriptions,
                GetSubscriptions(user_id=other, subscription_id=sub_id),
                deps,
            )
    assert db.state.subscriptions[sub.id].status == "active"


async def test_a_cancel_while_a_provider_call_is_in_flight_is_invalid_state(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await deposit(db, deps, user, "5.00")
    sub = await subscribed(db, deps, user)
    async with db.transaction() as uow:
        await uow.intents.insert(
            Intent(
                id=uuid.uuid4(),
                kind="yookassa_renewal",
                provider="yookassa",
                user_id=user,
                subscription_id=sub.id,
            )
        )
    with pytest.raises(InvalidState, match="in flight"):
        await run(
            db, subscriptions.cancel_subscription, cancel(user, sub.id, at_period_end=False), deps
        )
    marked = await run(
        db, subscriptions.cancel_subscription, cancel(user, sub.id, at_period_end=True), deps
    )  # stays safe
    assert isinstance(marked, SubscriptionOut)
    assert marked.cancel_at_period_end


async def test_a_cancel_now_while_a_periods_payment_is_at_the_provider_is_invalid_state(
    db: FakeDatabase, deps: Deps
) -> None:
    """A renewal's YooKassa payment is `pending` (its intent done, the charge processing):
    ending the subscription now would leave the confirmation paying a period nobody gets.
    Refused, nothing changed; a period-end cancel is taken."""
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await deposit(db, deps, user, "5.00")
    sub = await subscribed(db, deps, user)
    async with db.transaction() as uow:
        row = await uow.subscriptions.get(sub.id)
        assert row is not None
        await uow.wallet.record(
            Transaction.period_payment(period_charge(row), uow.clock(), "yookassa")
        )
    with pytest.raises(InvalidState, match="in flight") as refused:
        await run(
            db, subscriptions.cancel_subscription, cancel(user, sub.id, at_period_end=False), deps
        )
    assert refused.value.details["reason"] == "payment_in_flight"
    assert db.state.subscriptions[sub.id].status == "active"
    marked = await run(
        db, subscriptions.cancel_subscription, cancel(user, sub.id, at_period_end=True), deps
    )
    assert isinstance(marked, SubscriptionOut)
    assert (marked.status, marked.cancel_at_period_end) == ("active", True)


async def test_subscriptions_are_got_by_id_and_listed_for_their_user(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "1.00"), deps)
    await run(db, subscriptions.upsert_plan, a_plan("team", "1.00"), deps)
    await deposit(db, deps, user, "5.00")
    pro, team = await subscribed(db, deps, user), await subscribed(db, deps, user, "team")
    one = await run(
        db,
        subscriptions.get_subscriptions,
        GetSubscriptions(user_id=user, subscription_id=pro.id),
        deps,
    )
    assert one == pro
    listed = await run(db, subscriptions.get_subscriptions, GetSubscriptions(user_id=user), deps)
    assert isinstance(listed, SubscriptionList)
    assert [s.id for s in listed.subscriptions] == [team.id, pro.id]  # newest first
    none = await run(
        db, subscriptions.get_subscriptions, GetSubscriptions(user_id=new_user()), deps
    )
    assert isinstance(none, SubscriptionList)
    assert none.subscriptions == []


async def test_renewal_charges_the_next_period_then_dunning_past_due_when_dry(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("pro", "10.00"), deps)
    await deposit(db, deps, user, "20.00")
    sub = await subscribed(db, deps, user)
    assert await run(db, renewals.renew_next, [], deps) is None  # nothing due yet
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await run(db, renewals.renew_next, [], deps) == "renewed"
    assert (db.state.subscriptions[sub.id].paid_periods, await balance_of(db, user)) == (2, 0)
    clock.set(db.state.subscriptions[sub.id].current_period_end or clock.now)
    assert await run(db, renewals.renew_next, [], deps) == "failed"
    assert db.state.subscriptions[sub.id].status == "past_due"
    assert len(db.events_of(ev.SUBSCRIPTION_PAST_DUE)) == 1
    assert len(db.events_of(ev.PAYMENT_FAILED)) == 1
