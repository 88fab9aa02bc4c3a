"""Plans taxed at a rate, on the fake unit of work: the rate is copied into the plan's
version (a change of it is new terms), and the period invoices of balance subscriptions
carry its tax on their line while each period charges the invoice's total."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_contracts.taxes import UpsertTaxRate
from billing_worker.db.invoices import InvoiceRow
from billing_worker.domain.errors import InsufficientFunds, NotFound
from billing_worker.handlers import renewals, subscriptions, taxes
from billing_worker.handlers.deps import Deps
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


def a_plan(price: str = "10.00", **extra: Any) -> UpsertPlan:
    return UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "price": money(price),
         "interval": "month", **extra}
    )  # fmt: skip


async def a_rate(db: FakeDatabase, deps: Deps, code: str, percent: str, inclusive: bool) -> None:
    command = UpsertTaxRate(
        idempotency_key=key(), code=code, name=code, percent=percent, inclusive=inclusive
    )
    await run(db, taxes.upsert_tax_rate, command, deps)


async def subscribe(db: FakeDatabase, deps: Deps, user: str, quantity: int = 1) -> uuid.UUID:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="balance",
        quantity=quantity,
    )  # fmt: skip
    created = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(created, SubscriptionCreated)
    return created.subscription.id


def invoices_of(db: FakeDatabase, sub: uuid.UUID) -> list[InvoiceRow]:
    rows = [i for i in db.state.invoices.values() if i.subscription_id == sub]
    return sorted(rows, key=lambda i: i.number)


async def test_an_unknown_rate_on_a_plan_is_not_found(db: FakeDatabase, deps: Deps) -> None:
    with pytest.raises(NotFound, match="no-such"):
        await run(db, subscriptions.upsert_plan, a_plan(tax_rate="no-such"), deps)
    assert db.state.plans == {}


async def test_the_rate_is_copied_into_the_version_and_its_change_is_new_terms(
    db: FakeDatabase, deps: Deps
) -> None:
    await a_rate(db, deps, "vat", "20", inclusive=False)
    first = await run(db, subscriptions.upsert_plan, a_plan(tax_rate="vat"), deps)
    assert (first.version, first.tax_rate, first.tax_percent, first.tax_inclusive) == (
        1, "vat", "20", False,
    )  # fmt: skip
    same = await run(db, subscriptions.upsert_plan, a_plan(tax_rate="vat", name="Pro+"), deps)
    assert same.version == 1  # the same terms: changed in place
    await a_rate(db, deps, "vat", "21", inclusive=False)
    assert (await run(db, subscriptions.upsert_plan, a_plan(tax_rate="vat"), deps)).version == 2
    untaxed = await run(db, subscriptions.upsert_plan, a_plan(), deps)
    assert (untaxed.version, untaxed.tax_rate) == (3, None)


@pytest.mark.parametrize(
    ("inclusive", "quantity", "charged", "net", "tax"),
    [
        (False, 1, 1200, 1000, 200),  # 10.00 + 20 %
        (True, 1, 1000, 833, 167),  # 10.00 holding 20 %: 166.67 -> 1.67
        (False, 3, 3600, 3000, 600),  # three seats: 30.00 + 20 %
    ],
)
async def test_each_period_charges_its_invoice_total_with_the_tax_on_its_line(
    db: FakeDatabase, deps: Deps, clock: ManualClock,
    inclusive: bool, quantity: int, charged: int, net: int, tax: int,
) -> None:  # fmt: skip
    await a_rate(db, deps, "vat", "20", inclusive=inclusive)
    await run(db, subscriptions.upsert_plan, a_plan(tax_rate="vat"), deps)
    user = new_user()
    await deposit(db, deps, user, "100.00")
    sub = await subscribe(db, deps, user, quantity)
    state = db.state.subscriptions[sub]
    assert state.current_period_end is not None
    clock.set(state.current_period_end)
    assert await run(db, renewals.renew_next, [], deps) == "renewed"
    assert await balance_of(db, user) == 10_000 - 2 * charged
    for invoice in invoices_of(db, sub):
        [line] = invoice.lines
        assert (invoice.status, invoice.total_minor, invoice.subtotal_minor) == (
            "paid", charged, net,
        )  # fmt: skip
        assert (invoice.tax_minor, line.tax_minor, line.tax_rate_code) == (tax, tax, "vat")
        assert (line.quantity, line.unit_price_minor) == (quantity, 1000)
    charges = [t for t in db.state.transactions.values() if t.user_id == user and t.amount_minor]
    assert sorted(t.amount_minor for t in charges if t.kind == "subscription_charge") == [
        charged, charged,
    ]  # fmt: skip


async def test_a_balance_short_of_the_tax_is_insufficient(db: FakeDatabase, deps: Deps) -> None:
    await a_rate(db, deps, "vat", "20", inclusive=False)
    await run(db, subscriptions.upsert_plan, a_plan(tax_rate="vat"), deps)
    user = new_user()
    await deposit(db, deps, user, "10.00")  # the price, not the price + tax
    with pytest.raises(InsufficientFunds) as refused:
        await subscribe(db, deps, user)
    assert refused.value.details["price"] == {"amount": "12.00", "currency": "USD"}
