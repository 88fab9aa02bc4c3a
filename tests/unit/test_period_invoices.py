"""An invoice for every paid period, on the fake unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.invoices import MarkInvoiceUncollectible, PayInvoice, VoidInvoice
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_worker.db.invoices import InvoiceRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InsufficientFunds, InvalidState
from billing_worker.handlers import invoice_lifecycle, invoices, renewals, subscriptions
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 9, 30, tzinfo=UTC))  # the renewals stay in 2026


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


async def subscribed(db: FakeDatabase, deps: Deps, user: str) -> SubscriptionOut:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="balance"
    )
    created = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(created, SubscriptionCreated)
    return created.subscription


def period_invoices(db: FakeDatabase, sub: uuid.UUID) -> list[InvoiceRow]:
    rows = [i for i in db.state.invoices.values() if i.subscription_id == sub]
    return sorted(rows, key=lambda i: i.number)


async def renew_when_due(db: FakeDatabase, deps: Deps, clock: ManualClock, sub: uuid.UUID) -> Any:
    state = db.state.subscriptions[sub]
    due = state.next_attempt_at or state.current_period_end
    assert due is not None
    clock.set(due)
    return await run(db, renewals.renew_next, [], deps)


def pay(user: str, invoice_id: uuid.UUID) -> PayInvoice:
    return PayInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, source="balance")


async def past_due(
    db: FakeDatabase, deps: Deps, clock: ManualClock, user: str
) -> tuple[uuid.UUID, InvoiceRow]:
    """A subscription whose first renewal failed (no money left): its open invoice."""
    await run(db, subscriptions.upsert_plan, a_plan(), deps)
    await deposit(db, deps, user, "10.00")
    sub = (await subscribed(db, deps, user)).id
    assert await renew_when_due(db, deps, clock, sub) == "failed"
    [_, unpaid] = period_invoices(db, sub)
    return sub, unpaid


async def test_every_paid_period_has_one_paid_invoice_numbered_in_sequence(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan(), deps)
    await deposit(db, deps, user, "40.00")
    sub = await subscribed(db, deps, user)
    for _ in range(3):
        assert await renew_when_due(db, deps, clock, sub.id) == "renewed"
    rows = period_invoices(db, sub.id)
    assert [(i.period_index, i.status, i.total_minor) for i in rows] == [
        (n, "paid", 1000) for n in range(4)
    ]
    assert [int(i.number.rsplit("-", 1)[1]) for i in rows] == [1, 2, 3, 4]
    [line] = rows[0].lines
    start, end = sub.current_period_start, sub.current_period_end
    assert start is not None
    assert end is not None
    assert (line.description, line.quantity, line.unit_price_minor, line.amount_minor) == (
        f"Pro: {start:%Y-%m-%d} to {end:%Y-%m-%d}", 1, 1000, 1000,
    )  # fmt: skip
    assert len(db.events_of(ev.INVOICE_CREATED)) == len(db.events_of(ev.INVOICE_PAID)) == 4
    assert await balance_of(db, user) == 0


async def test_a_free_plan_and_a_trial_get_their_invoices_when_the_period_is_paid(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("10.00", trial_days=7), deps)
    await deposit(db, deps, user, "10.00")
    sub = await subscribed(db, deps, user)
    assert period_invoices(db, sub.id) == []  # the trial is not a paid period
    assert await renew_when_due(db, deps, clock, sub.id) == "renewed"
    [first] = period_invoices(db, sub.id)
    assert (first.period_index, first.status, first.total_minor) == (0, "paid", 1000)
    free = new_user()
    await run(db, subscriptions.upsert_plan, a_plan("0"), deps)
    free_sub = await subscribed(db, deps, free)
    [zero] = period_invoices(db, free_sub.id)
    assert (zero.status, zero.total_minor) == ("paid", 0)


async def test_a_failed_renewal_leaves_one_open_invoice_that_dunning_pays(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    assert (unpaid.status, unpaid.period_index, unpaid.total_minor) == ("open", 1, 1000)
    assert await renew_when_due(db, deps, clock, sub) == "failed"  # a second failure...
    assert [i.id for i in period_invoices(db, sub)][1:] == [unpaid.id]  # ...finds it
    await deposit(db, deps, user, "10.00")
    assert await renew_when_due(db, deps, clock, sub) == "renewed"
    settled = db.state.invoices[unpaid.id]
    assert (settled.status, settled.paid_at) == ("paid", clock.now)
    assert [e["invoice_id"] for e in db.events_of(ev.INVOICE_PAID)][-1] == str(unpaid.id)
    with pytest.raises(InvalidState):  # dunning paid it: never both
        await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert await balance_of(db, user) == 0
    assert len(period_invoices(db, sub)) == 2


async def test_paying_the_open_invoice_renews_the_subscription_as_dunning_would(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    with pytest.raises(InsufficientFunds):
        await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert db.state.invoices[unpaid.id].status == "open"
    await deposit(db, deps, user, "15.00")
    clock.advance(hours=2)
    paid = await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert (paid.status, paid.paid_at, paid.subscription_id, paid.period_index) == (
        "paid", clock.now, sub, 1,
    )  # fmt: skip
    state = db.state.subscriptions[sub]
    assert (state.status, state.paid_periods, state.dunning_attempts) == ("active", 2, 0)
    assert db.state.charges[sub, 1] is not None
    renewed = db.events_of(ev.SUBSCRIPTION_RENEWED)
    assert [e["subscription_id"] for e in renewed] == [str(sub)]
    assert await balance_of(db, user) == 500
    assert await run(db, renewals.renew_next, [], deps) is None  # nothing due: never both
    with pytest.raises(InvalidState):
        await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert await balance_of(db, user) == 500


async def test_the_last_dunning_failure_cancels_and_voids_the_open_invoice(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    for _ in deps.dunning_days:
        await renew_when_due(db, deps, clock, sub)
    assert db.state.subscriptions[sub].status == "canceled"
    voided = db.state.invoices[unpaid.id]
    assert voided.status == "void"
    assert voided.status_reason == "subscription ended: payment_failed"
    assert [e["invoice_id"] for e in db.events_of(ev.INVOICE_VOIDED)] == [str(unpaid.id)]
    await deposit(db, deps, user, "10.00")
    with pytest.raises(InvalidState):
        await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert await balance_of(db, user) == 1000


async def test_canceling_a_past_due_subscription_voids_its_open_invoice(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    command = CancelSubscription(
        idempotency_key=key(), user_id=user, subscription_id=sub, at_period_end=False
    )
    await run(db, subscriptions.cancel_subscription, command, deps)
    assert db.state.invoices[unpaid.id].status == "void"
    paid_first = period_invoices(db, sub)[0]
    assert paid_first.status == "paid"  # a paid period's invoice stays paid


async def test_a_period_invoice_follows_its_subscription_not_void_or_write_off(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    commands = [
        (invoice_lifecycle.void_invoice,
         VoidInvoice(idempotency_key=key(), user_id=user, invoice_id=unpaid.id, reason="x")),
        (invoice_lifecycle.mark_uncollectible,
         MarkInvoiceUncollectible(idempotency_key=key(), user_id=user, invoice_id=unpaid.id)),
    ]  # fmt: skip
    for handler, command in commands:
        with pytest.raises(InvalidState) as refused:
            await run(db, handler, command, deps)  # type: ignore[arg-type]
        assert refused.value.details["subscription_id"] == str(sub)
    assert db.state.invoices[unpaid.id].status == "open"


async def test_paying_while_a_provider_charge_is_in_flight_is_invalid_state(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    sub, unpaid = await past_due(db, deps, clock, user)
    await deposit(db, deps, user, "10.00")
    in_flight = TransactionRow(
        id=uuid.uuid4(), user_id=user, account_id=None, kind="subscription_charge",
        status="processing", amount_minor=1000, currency="USD", provider="yookassa",
        provider_ref="pay-1", created_at=clock.now, completed_at=None, subscription_id=sub,
    )  # fmt: skip
    db.state.transactions[in_flight.id] = in_flight  # a card charge of the period, unanswered
    with pytest.raises(InvalidState, match="in flight"):
        await run(db, invoices.pay_invoice, pay(user, unpaid.id), deps)
    assert db.state.invoices[unpaid.id].status == "open"
    assert await balance_of(db, user) == 1000
