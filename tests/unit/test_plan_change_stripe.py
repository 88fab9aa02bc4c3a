"""`billing.subscription.change-plan` of a Stripe-run subscription on the fake unit of
work and a canned Stripe: Stripe is asked first, ours follows only Stripe's answer, the
proration is Stripe's invoice's, and the refusals ask Stripe nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.plan_changes import ChangePlan
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.errors import InvalidInput, InvalidState, NotFound
from billing_worker.handlers import (
    plan_changes,
    stripe_changes,
    stripe_subscriptions,
    subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.providers.base import (
    LatestInvoice,
    ProviderSubscription,
    SubscriptionChange,
)
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, money, new_user, run
from support.provider_kit import CannedGateway, canned_deps

STATUS = {s.value: s for s in Sub}
PRICES = {"price_pro": 1000, "price_max": 3000}


class CannedStripe(CannedGateway):
    """Stripe with one subscription; a change_plan moves its item and, for
    always_invoice, answers with `invoice_total` as its proration invoice's total."""

    needs_customer = True

    def __init__(self) -> None:
        super().__init__("stripe")
        self.remote = ProviderSubscription("sub_1", "active", None, None, False)
        self.changes: list[SubscriptionChange] = []
        self.invoice_total = 0
        self.ignores_changes = False  # Stripe's answer does not show the change

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        return "cus_1"

    async def create_subscription(
        self, *, customer_ref: str, price_ref: str, payment_method_id: str | None,
        trial_days: int, idempotency_key: str, metadata: Mapping[str, str], quantity: int = 1,
        coupon_ref: str | None = None,
    ) -> ProviderSubscription:  # fmt: skip
        self.remote = dataclasses.replace(self.remote, price_ref=price_ref, quantity=quantity)
        return self.remote

    async def change_subscription(
        self, ref: str, change: SubscriptionChange
    ) -> ProviderSubscription:
        self.changes.append(change)
        if self.ignores_changes:
            return self.remote
        invoice = None
        if change.proration_behavior == "always_invoice":
            total = self.invoice_total
            invoice = LatestInvoice("in_upd", "paid", "subscription_update", total,
                                      max(total, 0), "USD")  # fmt: skip
        self.remote = dataclasses.replace(
            self.remote, price_ref=change.price_ref, quantity=change.quantity,
            latest_invoice=invoice,
        )  # fmt: skip
        return self.remote

    async def fetch_subscription(self, ref: str) -> ProviderSubscription:
        return self.remote

    def subscription_status(self, status: str) -> Sub | None:
        return STATUS.get(status)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def stripe() -> CannedStripe:
    return CannedStripe()


@pytest.fixture
async def deps(db: FakeDatabase, stripe: CannedStripe) -> Deps:
    deps = canned_deps(stripe)
    made = (("pro", "price_pro", "month"), ("max", "price_max", "month"),
            ("bare", None, "month"), ("yearly", "price_y", "year"))  # fmt: skip
    for code, price, interval in made:
        plan = UpsertPlan.model_validate(
            {"idempotency_key": key(), "code": code, "name": code.title(),
             "price": money(f"{PRICES.get(price or '', 3000) / 100:.2f}"),
             "interval": interval, "stripe_price_id": price}
        )  # fmt: skip
        await run(db, subscriptions.upsert_plan, plan, deps)
    return deps


async def stripe_subscribed(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock, user: str,
    status: str = "active",
) -> SubscriptionRow:  # fmt: skip
    stripe.remote = dataclasses.replace(
        stripe.remote, status=status, period_start=clock.now,
        period_end=clock.now + timedelta(days=30),
    )  # fmt: skip
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="stripe"
    )
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    made = await stripe_subscriptions.call_create(intent, deps)
    async with db.transaction() as uow:
        await stripe_subscriptions.finish_create(intent, made, uow, deps)
    [sub] = db.state.subscriptions.values()
    return sub


def change(user: str, sub: SubscriptionRow, code: str, **extra: Any) -> ChangePlan:
    return ChangePlan.model_validate(
        {"idempotency_key": key(), "user_id": user, "subscription_id": str(sub.id),
         "plan_code": code, **extra}
    )  # fmt: skip


async def begun(db: FakeDatabase, deps: Deps, command: ChangePlan) -> Intent:
    intent = await run(db, plan_changes.change_plan, command, deps)
    assert isinstance(intent, Intent)
    return intent


async def answered(db: FakeDatabase, deps: Deps, intent: Intent) -> SubscriptionOut:
    outcome = await stripe_changes.call(intent, deps)
    async with db.transaction() as uow:
        return await stripe_changes.finish(intent, outcome, uow, deps)


def current(db: FakeDatabase) -> tuple[str, int]:
    [sub] = db.state.subscriptions.values()
    return db.state.plan_by_id(sub.plan_id).code, sub.quantity


async def test_a_prorated_upgrade_asks_stripe_first_and_takes_the_amount_from_its_invoice(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    sub = await stripe_subscribed(db, deps, stripe, clock, user)
    intent = await begun(db, deps, change(user, sub, "max", quantity=2))

    assert current(db) == ("pro", 1)  # nothing here before Stripe's answer
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []
    assert (intent.request["price_ref"], intent.request["quantity"],
            intent.request["proration_behavior"]) == ("price_max", 2, "always_invoice")  # fmt: skip

    stripe.invoice_total = 2952  # Stripe's figure, not one of ours (ours would be 50.00)
    out = await answered(db, deps, intent)

    assert (out.plan_code, out.quantity) == ("max", 2)
    [asked] = stripe.changes
    assert asked.idempotency_key == str(intent.id)
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["from_plan_code"], updated["from_quantity"], updated["when"]) == (
        "pro", 1, "now",
    )  # fmt: skip
    assert updated["proration_charged"] == money("29.52")
    assert [c.proration_minor for c in db.state.plan_switches.values()] == [2952]


async def test_a_downgrade_is_credited_and_period_end_or_none_invoice_nothing(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    sub = await stripe_subscribed(db, deps, stripe, clock, user)
    stripe.invoice_total = 4000
    await answered(db, deps, await begun(db, deps, change(user, sub, "max", quantity=2)))
    stripe.invoice_total = -1667
    await answered(db, deps, await begun(db, deps, change(user, sub, "pro", quantity=1)))
    later = await begun(db, deps, change(user, sub, "max", when="period_end"))
    assert later.request["proration_behavior"] == "none"
    await answered(db, deps, later)
    none = await begun(db, deps, change(user, sub, "pro", proration="none"))
    assert none.request["proration_behavior"] == "none"
    await answered(db, deps, none)

    events = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert [(e["plan_code"], e["when"], e.get("proration_charged"), e.get("proration_credited"))
            for e in events] == [
        ("max", "now", money("40.00"), None),
        ("pro", "now", None, money("16.67")),
        ("max", "period_end", None, None),
        ("pro", "now", None, None),
    ]  # fmt: skip
    assert [c.proration_minor for c in db.state.plan_switches.values()] == [
        4000, -1667, None, None,
    ]  # fmt: skip


async def test_ours_switches_only_when_stripe_s_answer_shows_the_change(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    sub = await stripe_subscribed(db, deps, stripe, clock, user)
    stripe.ignores_changes = True  # e.g. a dashboard edit overtook it: Stripe bills Pro still

    out = await answered(db, deps, await begun(db, deps, change(user, sub, "max")))

    assert (out.plan_code, current(db)) == ("pro", ("pro", 1))
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []
    assert db.state.plan_switches == {}


async def test_a_trial_changes_at_stripe_without_an_invoice(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    sub = await stripe_subscribed(db, deps, stripe, clock, user, status="trialing")
    intent = await begun(db, deps, change(user, sub, "max"))
    assert intent.request["proration_behavior"] == "none"  # a trial paid nothing


async def test_refusals_ask_stripe_nothing(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    sub = await stripe_subscribed(db, deps, stripe, clock, user)
    with pytest.raises(InvalidInput, match="no stripe_price_id"):
        await run(db, plan_changes.change_plan, change(user, sub, "bare"), deps)
    with pytest.raises(InvalidInput, match="another interval"):
        await run(db, plan_changes.change_plan, change(user, sub, "yearly"), deps)
    with pytest.raises(NotFound):  # another's subscription: as a missing one
        await run(db, plan_changes.change_plan, change(new_user(), sub, "max"), deps)
    intent = await begun(db, deps, change(user, sub, "max"))
    async with db.transaction() as uow:  # as the service stores it: in flight now
        await uow.intents.insert(intent)
    with pytest.raises(InvalidState, match="in flight"):
        await run(db, plan_changes.change_plan, change(user, sub, "max", quantity=3), deps)
    assert stripe.changes == []
    assert current(db) == ("pro", 1)
