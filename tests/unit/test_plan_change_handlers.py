"""`billing.subscription.change-plan` on the fake unit of work: the proration's exact
figures, the scheduled change a renewal applies, and every refusal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.coupons import UpsertCoupon
from billing_contracts.plan_changes import ChangePlan
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscription_changes import PauseSubscription
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_contracts.taxes import UpsertTaxRate
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
)
from billing_worker.handlers import (
    coupons,
    plan_changes,
    renewals,
    subscription_changes,
    subscriptions,
    taxes,
)
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run

START = datetime(2027, 1, 1, tzinfo=UTC)  # a 31-day January: period 0 is Jan 1 - Feb 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="0")


async def plan(db: FakeDatabase, deps: Deps, code: str, price: str, currency: str = "USD",
               interval: str = "month") -> None:  # fmt: skip
    command = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": code, "name": code.title(),
         "price": money(price, currency), "interval": interval}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, command, deps)


async def subscribed(
    db: FakeDatabase, deps: Deps, user: str, code: str = "pro", quantity: int = 1
) -> SubscriptionOut:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code=code, payment_source="balance",
        quantity=quantity, payment_method_id=None,
    )  # fmt: skip
    created = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(created, SubscriptionCreated)
    return created.subscription


async def change(
    db: FakeDatabase, deps: Deps, user: str, sub: uuid.UUID, code: str, **extra: Any
) -> SubscriptionOut:
    command = ChangePlan.model_validate(
        {"idempotency_key": key(), "user_id": user, "subscription_id": sub, "plan_code": code,
         **extra}
    )  # fmt: skip
    return await run(db, plan_changes.change_plan, command, deps)


async def renew(db: FakeDatabase, deps: Deps) -> object:
    return await run(db, renewals.renew_next, [], deps)


@pytest.fixture
async def plans(db: FakeDatabase, deps: Deps) -> None:
    await plan(db, deps, "pro", "10.00")
    await plan(db, deps, "team", "25.00")


def code_of(db: FakeDatabase, sub: uuid.UUID) -> str:
    """The plan code the stored subscription is on (its version row, as the SQL joins)."""
    return db.state.plan_by_id(db.state.subscriptions[sub].plan_id).code


def proration_invoices(db: FakeDatabase) -> list[Any]:
    return [i for i in db.state.invoices.values() if i.subscription_id is None]


# --- now + prorate ------------------------------------------------------------------------


@pytest.mark.usefixtures("plans")
async def test_an_upgrade_mid_period_charges_the_exact_rest_with_a_paid_invoice(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    clock.advance(days=10)  # 21 of January's 31 days left
    out = await change(db, deps, user, sub.id, "team")
    # (2500 - 1000) * 21 / 31 = 1016.13 -> 1016
    assert await balance_of(db, user) == 5000 - 1000 - 1016
    assert (out.plan_code, out.plan_version, out.quantity) == ("team", 1, 1)
    assert out.current_period_end == sub.current_period_end  # the paid period stays
    [invoice] = proration_invoices(db)
    assert (invoice.status, invoice.total_minor) == ("paid", 1016)
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["plan_code"], updated["from_plan_code"], updated["change"]) == (
        "team", "pro", "change_plan")  # fmt: skip
    assert updated["proration_charged"] == money("10.16")
    assert updated["proration_credited"] is None
    [record] = db.state.plan_switches.values()
    assert (record.from_period_index, record.proration_minor) == (1, 1016)
    clock.set(out.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "renewed"
    assert await balance_of(db, user) == 5000 - 1000 - 1016 - 2500  # the new terms


async def test_the_proration_line_is_taxed_at_the_new_versions_rate(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    rate = UpsertTaxRate(idempotency_key=key(), code="vat", name="VAT", percent="20",
                         inclusive=False)  # fmt: skip
    await run(db, taxes.upsert_tax_rate, rate, deps)
    await plan(db, deps, "pro", "10.00")
    taxed = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "team", "name": "Team", "tax_rate": "vat",
         "price": money("25.00"), "interval": "month"}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, taxed, deps)
    user = new_user()
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    clock.advance(days=10)
    await change(db, deps, user, sub.id, "team")
    [invoice] = proration_invoices(db)
    [line] = invoice.lines
    # net 1016 (as untaxed), tax 20 % of it = 203.2 -> 203, total 1219
    assert (line.amount_minor, line.tax_minor, line.tax_rate_code) == (1016, 203, "vat")
    assert (invoice.subtotal_minor, invoice.total_minor) == (1016, 1219)
    assert await balance_of(db, user) == 5000 - 1000 - 1219


async def taxed_plan(
    db: FakeDatabase, deps: Deps, code: str, price: str, rate: str, interval: str = "month"
) -> None:
    command = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": code, "name": code.title(), "tax_rate": rate,
         "price": money(price), "interval": interval}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, command, deps)


async def rates(db: FakeDatabase, deps: Deps) -> None:
    for code, percent in (("vat", "20"), ("low", "10")):
        rate = UpsertTaxRate(idempotency_key=key(), code=code, name=code.upper(),
                             percent=percent, inclusive=False)  # fmt: skip
        await run(db, taxes.upsert_tax_rate, rate, deps)


async def test_a_downgrade_credit_is_taxed_at_the_rate_the_paid_period_was_charged_at(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await rates(db, deps)
    await taxed_plan(db, deps, "team", "25.00", "vat")  # version 1: a copy of 20 %
    await plan(db, deps, "pro", "10.00")  # untaxed
    user = new_user()
    await deposit(db, deps, user, "30.00")
    sub = await subscribed(db, deps, user, "team")  # 25.00 + 20 % = 30.00 paid
    assert await balance_of(db, user) == 0
    await taxed_plan(db, deps, "team", "25.00", "low")  # version 2: 10 %, new terms
    await change(db, deps, user, sub.id, "team", proration="none")  # v2 from the next period
    clock.advance(days=10)  # 21 of 31 days left

    await change(db, deps, user, sub.id, "pro")

    # (1000 - 2500) x 21/31 = -1016.13 -> 1016 net back, with the 20 % the period was
    # charged (203.2 -> 203): 1219, not pro's 0 % (1016) nor version 2's 10 % (1118)
    assert await balance_of(db, user) == 1219
    assert db.state.plan_switches[1].proration_minor == -1219


async def test_another_interval_credits_the_unused_part_at_the_paid_periods_rate(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await rates(db, deps)
    await taxed_plan(db, deps, "team", "25.00", "vat")
    await plan(db, deps, "annual", "100.00", interval="year")  # untaxed
    user = new_user()
    await deposit(db, deps, user, "130.00")
    sub = await subscribed(db, deps, user, "team")
    await taxed_plan(db, deps, "team", "25.00", "low")
    await change(db, deps, user, sub.id, "team", proration="none")
    clock.advance(days=10)

    await change(db, deps, user, sub.id, "annual")

    # unused 2500 x 21/31 = 1693.55 -> 1694, + 20 % (338.8 -> 339) = 2033 back; 100.00 paid
    assert await balance_of(db, user) == 13000 - 3000 + 2033 - 10000


@pytest.mark.usefixtures("plans")
async def test_a_downgrade_credits_the_exact_unused_difference(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "25.00")
    sub = await subscribed(db, deps, user, "team")
    clock.advance(days=10)
    out = await change(db, deps, user, sub.id, "pro")
    assert out.plan_code == "pro"
    assert await balance_of(db, user) == 1016  # the upgrade's figure, given back
    [credit] = [t for t in db.state.transactions.values() if t.kind == "credit"]
    assert credit.amount_minor == 1016
    assert proration_invoices(db) == []
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["proration_credited"], updated["proration_charged"]) == (
        money("10.16"), None)  # fmt: skip


@pytest.mark.usefixtures("plans")
async def test_more_seats_on_the_same_plan_is_a_prorated_seat_change(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)
    clock.advance(days=10, hours=12)  # 20.5 days left
    out = await change(db, deps, user, sub.id, "pro", quantity=3)
    assert (out.plan_code, out.quantity) == ("pro", 3)
    # (1000 * 3 - 1000) * 20.5 / 31 = 1322.58 -> 1323
    assert await balance_of(db, user) == 10000 - 1000 - 1323
    clock.set(out.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "renewed"
    assert await balance_of(db, user) == 10000 - 1000 - 1323 - 3000


@pytest.mark.usefixtures("plans")
async def test_an_upgrade_the_balance_cannot_pay_changes_nothing(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "20.00")
    sub = await subscribed(db, deps, user)
    clock.advance(days=1)  # (2500 - 1000) * 30 / 31 = 1452 > the 1000 left
    with pytest.raises(InsufficientFunds):
        await change(db, deps, user, sub.id, "team")
    assert (code_of(db, sub.id), await balance_of(db, user)) == ("pro", 1000)
    assert proration_invoices(db) == []
    assert db.state.plan_switches == {}
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []


@pytest.mark.usefixtures("plans")
async def test_a_change_scheduled_before_a_pause_is_applied_by_the_unpause(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)
    await change(db, deps, user, sub.id, "team", when="period_end")
    pause = PauseSubscription(idempotency_key=key(), user_id=user, subscription_id=sub.id)
    await run(db, subscription_changes.pause_subscription, pause, deps)
    clock.set(sub.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "paused"
    unpause = subscription_changes.UnpauseSubscription(
        idempotency_key=key(), user_id=user, subscription_id=sub.id
    )
    out = await run(db, subscription_changes.unpause_subscription, unpause, deps)
    assert isinstance(out, SubscriptionOut)
    assert (out.plan_code, out.scheduled_plan_code) == ("team", None)
    assert await balance_of(db, user) == 10000 - 1000 - 2500  # the new period on team


@pytest.mark.usefixtures("plans")
async def test_another_interval_credits_the_unused_part_and_starts_a_new_period_now(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps, "annual", "100.00", interval="year")
    await deposit(db, deps, user, "110.00")
    sub = await subscribed(db, deps, user)
    now = clock.advance(days=10)
    out = await change(db, deps, user, sub.id, "annual")
    # unused: 1000 * 21 / 31 = 677.42 -> 677 back; the year from now: 10000
    assert await balance_of(db, user) == 11000 - 1000 + 677 - 10000
    assert (out.current_period_start, out.current_period_end) == (
        now, datetime(2028, 1, 11, tzinfo=UTC))  # fmt: skip
    row = db.state.subscriptions[sub.id]
    assert (row.paid_periods, row.anchor_offset) == (2, 1)
    assert db.state.charge_plans[(sub.id, 1)] == row.plan_id  # charged on the new version


# --- now + none ---------------------------------------------------------------------------


@pytest.mark.usefixtures("plans")
async def test_without_proration_nothing_moves_and_the_renewal_charges_the_new_terms(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)
    clock.advance(days=10)
    out = await change(db, deps, user, sub.id, "team", quantity=2, proration="none")
    assert (out.plan_code, out.quantity, await balance_of(db, user)) == ("team", 2, 9000)
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["proration"], updated["proration_charged"]) == ("none", None)
    clock.set(out.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "renewed"
    assert await balance_of(db, user) == 9000 - 5000


@pytest.mark.usefixtures("plans")
async def test_a_coupon_given_with_a_change_discounts_the_next_charged_periods_only(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await run(db, coupons.upsert_coupon, UpsertCoupon.model_validate(
        {"idempotency_key": key(), "code": "HALF2", "name": "Half off twice",
         "percent_off": "50", "duration": "repeating", "duration_in_periods": 2}
    ), deps)  # fmt: skip
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)  # 10.00 paid for January
    clock.advance(days=10)
    with pytest.raises(NotFound):  # an unknown coupon: nothing changes
        await change(db, deps, user, sub.id, "team", proration="none", coupon="NOPE")
    assert (code_of(db, sub.id), await balance_of(db, user)) == ("pro", 9000)
    out = await change(db, deps, user, sub.id, "team", proration="none", coupon="HALF2")
    assert (out.plan_code, await balance_of(db, user)) == ("team", 9000)  # no money now
    assert (out.coupon, out.coupon_periods_used) == ("HALF2", 0)
    paid = []
    for _ in range(3):  # February and March at half of 25.00, then April in full
        clock.set(db.state.subscriptions[sub.id].current_period_end)  # type: ignore[arg-type]
        before = await balance_of(db, user)
        assert await renew(db, deps) == "renewed"
        paid.append(before - (await balance_of(db, user) or 0))  # type: ignore[operator]
    assert paid == [1250, 1250, 2500]
    # the coupon alone, on the subscription's own plan and seats: taken from the next period
    again = await change(db, deps, user, sub.id, "team", coupon="HALF2")
    assert again.plan_code == "team"
    clock.set(db.state.subscriptions[sub.id].current_period_end)  # type: ignore[arg-type]
    before = await balance_of(db, user)
    assert await renew(db, deps) == "renewed"
    assert before - (await balance_of(db, user) or 0) == 1250  # type: ignore[operator]


# --- period_end ---------------------------------------------------------------------------


@pytest.mark.usefixtures("plans")
async def test_a_change_at_the_period_end_is_shown_then_applied_by_the_renewal(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)
    first = await change(db, deps, user, sub.id, "team", when="period_end")
    assert (first.scheduled_plan_code, first.scheduled_quantity) == ("team", 1)
    out = await change(db, deps, user, sub.id, "team", quantity=2, when="period_end")
    assert (out.plan_code, out.scheduled_plan_code, out.scheduled_quantity) == ("pro", "team", 2)
    assert await balance_of(db, user) == 9000  # nothing moves now
    assert db.state.plan_switches == {}
    clock.set(out.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "renewed"
    assert await balance_of(db, user) == 9000 - 5000  # the later change: 2 x team
    row = db.state.subscriptions[sub.id]
    assert (code_of(db, sub.id), row.quantity, row.scheduled_plan_id) == ("team", 2, None)
    assert db.state.charge_plans[(sub.id, 1)] == row.plan_id
    [record] = db.state.plan_switches.values()
    assert (record.from_period_index, record.proration_minor) == (1, None)


@pytest.mark.usefixtures("plans")
async def test_a_cancel_or_a_change_back_drops_a_scheduled_change(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribed(db, deps, user)
    await change(db, deps, user, sub.id, "team", when="period_end")
    back = await change(db, deps, user, sub.id, "pro", when="period_end")
    assert back.scheduled_plan_code is None
    await change(db, deps, user, sub.id, "team", when="period_end")
    command = CancelSubscription(
        idempotency_key=key(), user_id=user, subscription_id=sub.id, at_period_end=True
    )
    out = await run(db, subscriptions.cancel_subscription, command, deps)
    assert isinstance(out, SubscriptionOut)
    assert (out.cancel_at_period_end, out.scheduled_plan_code) == (True, None)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.usefixtures("plans")
async def test_another_users_subscription_is_not_found_like_a_missing_one(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, other = new_user(), new_user()
    await deposit(db, deps, owner, "50.00")
    sub = await subscribed(db, deps, owner)
    with pytest.raises(NotFound) as theirs:
        await change(db, deps, other, sub.id, "team")
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as nobodys:
        await change(db, deps, owner, missing, "team")
    assert theirs.value.message.replace(str(sub.id), "X") == nobodys.value.message.replace(
        str(missing), "X"
    )
    assert code_of(db, sub.id) == "pro"


@pytest.mark.usefixtures("plans")
async def test_refusals_leave_the_subscription_as_it_was(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await plan(db, deps, "euro", "9.00", currency="EUR")
    await deposit(db, deps, user, "50.00")
    sub = await subscribed(db, deps, user)
    with pytest.raises(InvalidInput):  # nothing changes
        await change(db, deps, user, sub.id, "pro", quantity=1)
    with pytest.raises(NotFound):
        await change(db, deps, user, sub.id, "no-such-plan")
    with pytest.raises(CurrencyMismatch):
        await change(db, deps, user, sub.id, "euro")
    team = await subscribed(db, deps, user, "team")
    with pytest.raises(InvalidState):  # the user has a live team subscription already
        await change(db, deps, user, sub.id, "team")
    pause = PauseSubscription(idempotency_key=key(), user_id=user, subscription_id=team.id)
    await run(db, subscription_changes.pause_subscription, pause, deps)
    with pytest.raises(InvalidState):  # pausing at the period end
        await change(db, deps, user, team.id, "team", quantity=2)
    cancel = CancelSubscription(idempotency_key=key(), user_id=user, subscription_id=sub.id,
                                at_period_end=False)  # fmt: skip
    await run(db, subscriptions.cancel_subscription, cancel, deps)
    with pytest.raises(InvalidState):  # canceled
        await change(db, deps, user, sub.id, "pro", quantity=2)
    assert db.state.plan_switches == {}
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []


@pytest.mark.usefixtures("plans")
async def test_a_past_due_subscription_is_refused_and_a_trial_switches_without_money(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "10.00")
    sub = await subscribed(db, deps, user)  # the balance is 0 after the first period
    clock.set(sub.current_period_end)  # type: ignore[arg-type]
    assert await renew(db, deps) == "failed"
    with pytest.raises(InvalidState):  # past_due: its unpaid period is on the old terms
        await change(db, deps, user, sub.id, "team")
    trial = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "trial", "name": "Trial", "trial_days": 14,
         "price": money("5.00"), "interval": "month"}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, trial, deps)
    trialing = await subscribed(db, deps, user, "trial")
    assert trialing.status == "trialing"
    out = await change(db, deps, user, trialing.id, "trial", quantity=4)  # prorate: nothing paid
    assert (out.status, out.quantity, out.current_period_end) == (
        "trialing", 4, trialing.current_period_end)  # fmt: skip
    assert await balance_of(db, user) == 0
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["proration_charged"], updated["proration_credited"]) == (None, None)
