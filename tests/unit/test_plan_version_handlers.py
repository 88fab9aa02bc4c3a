"""Plan versions and `billing.plan.migrate` on the fake unit of work: a plan edit leaves its
subscribers' terms alone until they are migrated, from their next period on."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.plans import ListPlans, MigratePlan, PlanMigration, PlanOut, UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, GetSubscriptions, SubscriptionOut
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput, InvalidState, NotFound
from billing_worker.handlers import plan_migrate, renewals, subscriptions
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run

JAN_15 = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(JAN_15)


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="0")


def upsert(price: str = "10.00", interval: str = "month", **extra: Any) -> UpsertPlan:
    return UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "interval": interval,
         "price": money(price, extra.pop("currency", "USD")), **extra}
    )  # fmt: skip


def migrate(to_version: int, **extra: Any) -> MigratePlan:
    return MigratePlan.model_validate(
        {"idempotency_key": key(), "plan_code": "pro", "to_version": to_version, **extra}
    )


async def plan(db: FakeDatabase, deps: Deps, *args: Any, **extra: Any) -> PlanOut:
    return await run(db, subscriptions.upsert_plan, upsert(*args, **extra), deps)


async def subscriber(db: FakeDatabase, deps: Deps, funds: str = "500.00") -> SubscriptionOut:
    user = new_user()
    await deposit(db, deps, user, funds)
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="balance"
    )
    created = await run(db, subscriptions.create_subscription, command, deps)
    return created.subscription  # type: ignore[union-attr]


async def reread(db: FakeDatabase, deps: Deps, sub: SubscriptionOut) -> SubscriptionOut:
    query = GetSubscriptions(user_id=sub.user_id, subscription_id=sub.id)
    found = await run(db, subscriptions.get_subscriptions, query, deps)
    assert isinstance(found, SubscriptionOut)
    return found


async def renew_due(db: FakeDatabase, deps: Deps, clock: ManualClock, at: datetime) -> None:
    clock.set(at)
    while await run(db, renewals.renew_next, [], deps) is not None:
        pass


async def test_new_terms_make_a_version_other_edits_change_it_in_place(
    db: FakeDatabase, deps: Deps
) -> None:
    first = await plan(db, deps, "10.00")
    same = await plan(db, deps, "10.00")  # identical: nothing new
    renamed = await plan(db, deps, "10.00", name="Pro+", stripe_price_id="price_2", vat_code=2)
    assert (first.version, same.version, renamed.version) == (1, 1, 1)
    assert (renamed.name, renamed.stripe_price_id, renamed.vat_code) == ("Pro+", "price_2", 2)
    edits: list[dict[str, Any]] = [  # each changes one more of the terms
        {"price": "12.00"},
        {"price": "12.00", "currency": "EUR"},
        {"price": "12.00", "currency": "EUR", "interval": "year"},
        {"price": "12.00", "currency": "EUR", "interval": "year", "interval_count": 2},
        {"price": "12.00", "currency": "EUR", "interval": "year", "interval_count": 2,
         "trial_days": 7},
    ]  # fmt: skip
    for n, terms in enumerate(edits, start=2):
        assert (await plan(db, deps, **terms)).version == n
    current = await run(db, subscriptions.list_plans, ListPlans(), deps)
    assert [(p.code, p.version, p.trial_days) for p in current.plans] == [("pro", 6, 7)]
    every = await run(db, subscriptions.list_plans, ListPlans(code="pro"), deps)
    assert [p.version for p in every.plans] == [1, 2, 3, 4, 5, 6]
    assert every.plans[0].name == "Pro+"  # the in-place edit went to version 1
    none = await run(db, subscriptions.list_plans, ListPlans(code="nope"), deps)
    assert none.plans == []


async def test_a_plan_edit_leaves_subscribers_terms_until_they_are_migrated(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await plan(db, deps, "10.00", "month")
    old = await subscriber(db, deps)
    assert (old.plan_version, old.current_period_end) == (1, datetime(2026, 2, 15, 9, tzinfo=UTC))
    assert (await plan(db, deps, "15.00", "year")).version == 2
    new = await subscriber(db, deps)  # new subscribers get the current version
    assert (new.plan_version, new.current_period_end) == (2, datetime(2027, 1, 15, 9, tzinfo=UTC))
    assert await balance_of(db, new.user_id) == 48500
    assert await reread(db, deps, old) == old  # the edit changed nothing of theirs

    await renew_due(db, deps, clock, datetime(2026, 2, 15, 9, tzinfo=UTC))
    renewed = await reread(db, deps, old)
    assert renewed.current_period_end == datetime(2026, 3, 15, 9, tzinfo=UTC)  # monthly
    assert await balance_of(db, old.user_id) == 48000  # 10.00 twice, not 15.00

    moved = await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    assert (moved.moved, moved.skipped, moved.to_version) == (1, [], 2)
    after = await reread(db, deps, old)
    assert after.plan_version == 2
    assert (after.current_period_start, after.current_period_end) == (
        renewed.current_period_start,
        renewed.current_period_end,
    )  # fmt: skip  (the paid period stays)
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["subscription_id"], updated["from_plan_version"], updated["plan_version"]) == (
        str(old.id), 1, 2,
    )  # fmt: skip
    assert updated["effective_at"] == "2026-03-15T09:00:00Z"

    await renew_due(db, deps, clock, datetime(2026, 3, 15, 9, tzinfo=UTC))
    last = await reread(db, deps, old)
    assert (last.current_period_start, last.current_period_end) == (
        datetime(2026, 3, 15, 9, tzinfo=UTC), datetime(2027, 3, 15, 9, tzinfo=UTC),
    )  # fmt: skip
    assert await balance_of(db, old.user_id) == 46500  # the new price from the next period
    versions = {p.id: p.version for p in db.state.plan_rows.values()}
    charged = [versions[db.state.charge_plans[old.id, i]] for i in range(3)]  # type: ignore[index]
    assert charged == [1, 1, 2]


async def test_an_interval_change_re_anchors_at_the_end_of_the_paid_period(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await plan(db, deps, "10.00", "month")
    sub = await subscriber(db, deps)
    for month in range(2, 7):  # 6 paid periods: Jan 15 ... Jul 15
        await renew_due(db, deps, clock, datetime(2026, month, 15, 9, tzinfo=UTC))
    await plan(db, deps, "100.00", "year")
    assert (await run(db, plan_migrate.migrate_plan, migrate(2), deps)).moved == 1
    row = db.state.subscriptions[sub.id]
    assert (row.paid_periods, row.anchor_offset) == (6, 6)
    assert row.billing_anchor == datetime(2026, 7, 15, 9, tzinfo=UTC)
    await renew_due(db, deps, clock, datetime(2026, 7, 15, 9, tzinfo=UTC))
    after = await reread(db, deps, sub)
    assert (after.current_period_start, after.current_period_end) == (
        datetime(2026, 7, 15, 9, tzinfo=UTC),
        datetime(2027, 7, 15, 9, tzinfo=UTC),
    )  # fmt: skip  (not 2032-01-15 → 2033-01-15)
    await renew_due(db, deps, clock, datetime(2027, 7, 15, 9, tzinfo=UTC))
    assert (await reread(db, deps, sub)).current_period_end == datetime(2028, 7, 15, 9, tzinfo=UTC)
    assert sorted(i for s, i in db.state.charges if s == sub.id) == list(range(8))
    assert await balance_of(db, sub.user_id) == 50000 - 6 * 1000 - 2 * 10000


async def test_the_same_interval_keeps_the_anchor_so_month_ends_stay(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    clock.set(datetime(2027, 1, 31, 9, tzinfo=UTC))
    await plan(db, deps, "10.00", "month")
    sub = await subscriber(db, deps)
    await renew_due(db, deps, clock, datetime(2027, 2, 28, 9, tzinfo=UTC))
    await plan(db, deps, "11.00", "month")
    await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    await renew_due(db, deps, clock, datetime(2027, 3, 31, 9, tzinfo=UTC))
    after = await reread(db, deps, sub)
    assert after.current_period_end == datetime(2027, 4, 30, 9, tzinfo=UTC)  # not Apr 28
    assert db.state.subscriptions[sub.id].anchor_offset == 0


async def test_a_currency_change_is_refused_and_moves_nothing(db: FakeDatabase, deps: Deps) -> None:
    await plan(db, deps, "10.00")
    sub = await subscriber(db, deps)
    await plan(db, deps, "10.00", currency="EUR")
    before = dict(db.state.subscriptions)
    with pytest.raises(CurrencyMismatch):
        await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    assert db.state.subscriptions == before
    assert db.state.plan_changes == {}
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []
    assert (await reread(db, deps, sub)).plan_version == 1


async def test_one_live_subscription_per_user_and_plan_code_across_versions(
    db: FakeDatabase, deps: Deps
) -> None:
    await plan(db, deps, "10.00")
    sub = await subscriber(db, deps)
    await plan(db, deps, "12.00")
    command = CreateSubscription(
        idempotency_key=key(), user_id=sub.user_id, plan_code="pro", payment_source="balance"
    )
    with pytest.raises(InvalidState, match="already has a live pro"):
        await run(db, subscriptions.create_subscription, command, deps)


async def test_from_version_moves_only_that_version_and_stripe_ones_are_skipped(
    db: FakeDatabase, deps: Deps
) -> None:
    await plan(db, deps, "10.00")
    on_one = await subscriber(db, deps)
    await plan(db, deps, "11.00")
    on_two = await subscriber(db, deps)
    stripe_run = await stripe_subscription(db, on_one)
    await plan(db, deps, "12.00")
    only_one = await run(db, plan_migrate.migrate_plan, migrate(3, from_version=1), deps)
    assert only_one.moved == 1
    assert [(s.subscription_id, s.reason) for s in only_one.skipped] == [(stripe_run, "stripe")]
    assert (await reread(db, deps, on_one)).plan_version == 3
    assert (await reread(db, deps, on_two)).plan_version == 2
    assert db.state.plan_by_id(db.state.subscriptions[stripe_run].plan_id).version == 1
    rest = await run(db, plan_migrate.migrate_plan, migrate(3), deps)  # every older version
    assert isinstance(rest, PlanMigration)
    assert (rest.moved, [s.reason for s in rest.skipped]) == (1, ["stripe"])
    assert len(db.events_of(ev.SUBSCRIPTION_UPDATED)) == 2


async def stripe_subscription(db: FakeDatabase, like: SubscriptionOut) -> uuid.UUID:
    """A live Stripe-run subscription of another user on the version `like` is on."""
    source = db.state.subscriptions[like.id]
    row: SubscriptionRow = dataclasses.replace(
        source, id=uuid.uuid4(), user_id=new_user(), payment_source="stripe",
        provider_subscription_id=f"sub_{uuid.uuid4().hex[:8]}", billing_anchor=None,
    )  # fmt: skip
    async with db.transaction() as uow:
        await uow.subscriptions.ensure_user(row.user_id, None)
        await uow.subscriptions.insert(row)
    return row.id


async def test_unknown_versions_and_a_move_to_itself_are_refused(
    db: FakeDatabase, deps: Deps
) -> None:
    await plan(db, deps, "10.00")
    await subscriber(db, deps)
    with pytest.raises(NotFound):
        await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    with pytest.raises(NotFound):
        await run(db, plan_migrate.migrate_plan, migrate(1, from_version=7), deps)
    with pytest.raises(InvalidInput):
        await run(db, plan_migrate.migrate_plan, migrate(1, from_version=1), deps)
    nothing = await run(db, plan_migrate.migrate_plan, migrate(1), deps)  # none is older
    assert (nothing.moved, nothing.skipped) == (0, [])


async def test_a_subscription_with_a_provider_charge_in_flight_is_left_for_later(
    db: FakeDatabase, deps: Deps
) -> None:
    await plan(db, deps, "10.00")
    busy, idle = await subscriber(db, deps), await subscriber(db, deps)
    await plan(db, deps, "12.00")
    async with db.transaction() as uow:  # a YooKassa renewal begun, not answered yet
        await uow.intents.insert(
            Intent(id=uuid.uuid4(), kind="yookassa_renewal", provider="yookassa",
                   user_id=busy.user_id, subscription_id=busy.id)
        )  # fmt: skip
    result = await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    assert result.moved == 1
    assert [(s.subscription_id, s.reason) for s in result.skipped] == [
        (busy.id, "payment_in_flight")
    ]
    assert (await reread(db, deps, busy)).plan_version == 1
    assert (await reread(db, deps, idle)).plan_version == 2


async def test_a_subscription_in_dunning_stays_on_its_version_until_its_period_is_settled(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    """Its unpaid period's open invoice was issued at the old price: a retry must charge
    that price, so a migration leaves it for later (the audit would see the difference)."""
    await plan(db, deps, "10.00")
    late = await subscriber(db, deps, funds="10.00")  # pays the first period only
    await renew_due(db, deps, clock, datetime(2026, 2, 15, 10, 0, tzinfo=UTC))
    assert (await reread(db, deps, late)).status == "past_due"
    await plan(db, deps, "12.00")
    result = await run(db, plan_migrate.migrate_plan, migrate(2), deps)
    assert (result.moved, [(s.subscription_id, s.reason) for s in result.skipped]) == (
        0,
        [(late.id, "past_due")],
    )
    assert (await reread(db, deps, late)).plan_version == 1
