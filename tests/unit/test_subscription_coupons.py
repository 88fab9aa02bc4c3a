"""A subscription's coupon on the fake unit of work: balance periods discounted while it
lasts (once, repeating N, forever), a trial not counted, the charge equal to the
discounted invoice total, refusals that write nothing, and Stripe's coupon id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts.coupons import UpsertCoupon
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_contracts.taxes import UpsertTaxRate
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput, InvalidState, NotFound
from billing_worker.handlers import coupons, renewals, subscriptions, taxes
from billing_worker.handlers.deps import Deps
from billing_worker.providers.stripe.subscriptions import subscription_params
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="0")


async def setup(db: FakeDatabase, deps: Deps, **plan: Any) -> None:
    vat = UpsertTaxRate(
        idempotency_key=key(), code="vat10", name="VAT", percent="10", inclusive=False
    )
    await run(db, taxes.upsert_tax_rate, vat, deps)
    await run(db, subscriptions.upsert_plan, UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "price": money("10.00"),
         "interval": "month", **plan}), deps)  # fmt: skip
    for code, terms in {
        "ONCE50": {"percent_off": "50", "duration": "once"},
        "REP3": {
            "amount_off": "2.50",
            "currency": "USD",
            "duration": "repeating",
            "duration_in_periods": 3,
        },
        "ALWAYS": {"percent_off": "10", "duration": "forever"},
        "EUR": {"amount_off": "1.00", "currency": "EUR", "duration": "once"},
        "STRIPE": {"percent_off": "5", "duration": "once", "stripe_coupon_id": "co_5"},
    }.items():
        command = UpsertCoupon.model_validate(
            {"idempotency_key": key(), "code": code, "name": code, **terms}
        )
        await run(db, coupons.upsert_coupon, command, deps)


async def subscribe(db: FakeDatabase, deps: Deps, user: str, coupon: str, **extra: Any) -> Any:
    command = CreateSubscription.model_validate(
        {"idempotency_key": key(), "user_id": user, "plan_code": "pro",
         "payment_source": "balance", "coupon": coupon, **extra}
    )  # fmt: skip
    return await run(db, subscriptions.create_subscription, command, deps)


async def charged(
    db: FakeDatabase, deps: Deps, clock: ManualClock, sub: uuid.UUID, periods: int
) -> list[tuple[int, int, int]]:
    """(discount, tax, total) of each period invoice after `periods` more renewals."""
    for _ in range(periods):
        state = db.state.subscriptions[sub]
        assert state.current_period_end is not None
        clock.set(state.current_period_end)
        await run(db, renewals.renew_next, [], deps)
    rows = sorted(
        (i for i in db.state.invoices.values() if i.subscription_id == sub),
        key=lambda i: i.period_index or 0,
    )
    assert all(i.status == "paid" for i in rows)
    return [(i.discount_minor, i.tax_minor, i.total_minor) for i in rows]


@pytest.mark.parametrize(
    ("coupon", "expected"),
    [
        # 10.00 + 10 % tax; ONCE50: 5.00 off then tax 0.50
        ("ONCE50", [(500, 50, 550)] + [(0, 100, 1100)] * 4),
        # 2.50 off for 3 charged periods: tax 10 % of 7.50 = 0.75
        ("REP3", [(250, 75, 825)] * 3 + [(0, 100, 1100)] * 2),
        ("ALWAYS", [(100, 90, 990)] * 5),
    ],
)
async def test_balance_periods_are_discounted_while_the_coupon_lasts(
    db: FakeDatabase, deps: Deps, clock: ManualClock, coupon: str, expected: list[Any]
) -> None:
    await setup(db, deps, tax_rate="vat10")
    user = new_user()
    await deposit(db, deps, user, "100.00")
    created = await subscribe(db, deps, user, coupon)
    assert isinstance(created, SubscriptionCreated)
    assert await charged(db, deps, clock, created.subscription.id, 4) == expected
    # the wallet paid exactly the invoice totals
    assert await balance_of(db, user) == 10000 - sum(total for *_, total in expected)


async def test_a_trial_period_does_not_use_the_coupon(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    await setup(db, deps, trial_days=7)
    user = new_user()
    await deposit(db, deps, user, "100.00")
    created = await subscribe(db, deps, user, "ONCE50")
    sub = created.subscription.id
    assert db.state.redemptions[sub] == ("ONCE50", 0)  # the trial charged nothing
    assert await charged(db, deps, clock, sub, 2) == [(500, 0, 500), (0, 0, 1000)]
    assert db.state.redemptions[sub] == ("ONCE50", 1)


@pytest.mark.parametrize(
    ("coupon", "error"),
    [("NOPE", NotFound), ("OFF", InvalidState), ("EUR", CurrencyMismatch)],
)
async def test_a_refused_coupon_creates_nothing(
    db: FakeDatabase, deps: Deps, coupon: str, error: type[Exception]
) -> None:
    await setup(db, deps)
    await run(db, coupons.upsert_coupon, UpsertCoupon.model_validate(
        {"idempotency_key": key(), "code": "OFF", "name": "off", "percent_off": "5",
         "duration": "once", "active": False}), deps)  # fmt: skip
    user = new_user()
    await deposit(db, deps, user, "100.00")
    with pytest.raises(error):
        await subscribe(db, deps, user, coupon)
    assert db.state.subscriptions == {}
    assert db.state.redemptions == {}
    assert await balance_of(db, user) == 10000


async def test_a_stripe_subscription_needs_the_coupons_stripe_id(
    db: FakeDatabase, deps: Deps
) -> None:
    await setup(db, deps, stripe_price_id="price_1")
    with pytest.raises(InvalidInput, match="stripe_coupon_id"):
        await subscribe(db, deps, new_user(), "ONCE50", payment_source="stripe")
    assert db.state.subscriptions == {}


def test_stripe_is_asked_with_the_coupons_stripe_id() -> None:
    params = subscription_params(
        customer_ref="cus_1", price_ref="price_1", payment_method_id=None, trial_days=0,
        metadata={}, coupon_ref="co_5",
    )  # fmt: skip
    assert params["discounts"] == [{"coupon": "co_5"}]
    without = subscription_params(
        customer_ref="cus_1", price_ref="price_1", payment_method_id=None, trial_days=0,
        metadata={},
    )  # fmt: skip
    assert "discounts" not in without
