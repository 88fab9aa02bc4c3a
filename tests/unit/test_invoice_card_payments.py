"""Invoices paid by card (`billing.invoice.pay` with source stripe / yookassa) on the fake
unit of work: no PostgreSQL, no RabbitMQ, no provider (a canned gateway answers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from billing_contracts import events as ev
from billing_contracts.invoices import (
    CreateInvoice,
    InvoicePayResult,
    MarkInvoiceUncollectible,
    PayInvoice,
    VoidInvoice,
)
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidInput, InvalidState, NotFound, ProviderError
from billing_worker.domain.events import PaymentOutcome
from billing_worker.handlers import (
    invoice_cards,
    invoice_lifecycle,
    invoices,
    renewals,
    subscriptions,
    wallet,
)
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
from billing_worker.providers.base import Gateways, PaymentResult, PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, money, new_user, run, wire
from support.provider_kit import CannedGateway, deliver, payment_event


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def stripe() -> CannedGateway:
    return CannedGateway("stripe")


@pytest.fixture
def deps(stripe: CannedGateway) -> Deps:
    gateways = {"stripe": stripe, "yookassa": CannedGateway("yookassa")}
    return Deps(Gateways(gateways, "stripe"), Decimal("0"))


async def an_invoice(db: FakeDatabase, deps: Deps, user: str, price: str = "20.00") -> uuid.UUID:
    command = CreateInvoice.model_validate({
        "idempotency_key": key(), "user_id": user, "currency": "USD",
        "lines": [{"description": "Pro", "quantity": 1, "unit_price": money(price)}],
    })  # fmt: skip
    return (await run(db, invoices.create_invoice, command, deps)).id


def by_card(user: str, invoice_id: uuid.UUID, source: str = "stripe", **extra: Any) -> PayInvoice:
    return PayInvoice.model_validate(
        {"idempotency_key": key(), "user_id": user, "invoice_id": str(invoice_id),
         "source": source, **extra}
    )  # fmt: skip


def from_balance(user: str, invoice_id: uuid.UUID) -> PayInvoice:
    return PayInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, source="balance")


async def started(
    db: FakeDatabase, deps: Deps, user: str, invoice_id: uuid.UUID, source: str = "stripe"
) -> tuple[Intent, InvoicePayResult]:
    """Phases one to three of a card payment, the provider answering `pending`."""
    intent = await run(db, invoices.pay_invoice, by_card(user, invoice_id, source), deps)
    assert isinstance(intent, Intent)
    charged = await wallet.call_deposit(intent, deps)
    async with db.transaction() as uow:
        reply = await invoice_cards.finish(intent, charged, uow, deps)
    return intent, reply


def payment(db: FakeDatabase, intent: Intent) -> TransactionRow:
    return db.state.transactions[intent.id]


def kinds(db: FakeDatabase, user: str) -> list[tuple[str, str, int]]:
    rows = sorted(
        (t for t in db.state.transactions.values() if t.user_id == user),
        key=lambda t: (t.created_at, t.kind),
    )
    return [(t.kind, t.status, t.amount_minor) for t in rows]


@pytest.mark.parametrize("source", ["stripe", "yookassa"])
async def test_a_card_payment_is_pending_then_the_confirmation_pays_the_invoice_exactly(
    db: FakeDatabase, deps: Deps, stripe: CannedGateway, source: str
) -> None:
    user = new_user()
    invoice_id = await an_invoice(db, deps, user, "20.00")
    intent, reply = await started(db, deps, user, invoice_id, source)
    assert (intent.kind, intent.provider, intent.request["amount_minor"]) == (
        "invoice_card", source, 2000,
    )  # fmt: skip
    assert reply.status == "open"
    assert reply.payment is not None
    assert (reply.payment.kind, reply.payment.status, reply.payment.amount) == (
        "deposit", "processing", wire("20.00"),
    )  # fmt: skip
    row = payment(db, intent)
    assert (row.invoice_id, row.provider) == (invoice_id, source)
    assert db.events_of(ev.INVOICE_PAID) == []
    event = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, stripe, event) == Applied.APPLIED
    paid = db.state.invoices[invoice_id]
    assert paid.status == "paid"
    assert [e["invoice_id"] for e in db.events_of(ev.INVOICE_PAID)] == [str(invoice_id)]
    # the ledger: the card's money in, the invoice's debit out, the balance back at 0
    assert sorted(kinds(db, user)) == [
        ("deposit", "completed", 2000), ("invoice_payment", "completed", 2000),
    ]  # fmt: skip
    assert await balance_of(db, user) == 0
    assert await deliver(db, deps, stripe, event) == Applied.DUPLICATE
    again = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, stripe, again) == Applied.STALE
    assert len(db.events_of(ev.INVOICE_PAID)) == 1
    assert await balance_of(db, user) == 0


async def test_a_saved_method_charged_at_once_pays_the_invoice_in_the_reply(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    invoice_id = await an_invoice(db, deps, user, "7.50")
    intent = await run(db, invoices.pay_invoice, by_card(user, invoice_id), deps)
    assert isinstance(intent, Intent)
    answer = PaymentResult("pay_now", PaymentStatus.SUCCEEDED, confirmation={"id": "pay_now"})
    async with db.transaction() as uow:
        reply = await invoice_cards.finish(intent, wallet.Charged(answer), uow, deps)
    assert reply.status == "paid"
    assert reply.payment is not None
    assert reply.payment.status == "completed"
    assert await balance_of(db, user) == 0
    assert len(db.events_of(ev.INVOICE_PAID)) == 1


async def test_a_mismatched_confirmation_changes_nothing(
    db: FakeDatabase, deps: Deps, stripe: CannedGateway
) -> None:
    user = new_user()
    invoice_id = await an_invoice(db, deps, user, "20.00")
    intent, _ = await started(db, deps, user, invoice_id)
    row = payment(db, intent)
    for forged in (
        payment_event(row, PaymentOutcome.SUCCEEDED, amount_minor=1),
        payment_event(row, PaymentOutcome.SUCCEEDED, currency="EUR"),
        payment_event(row, PaymentOutcome.SUCCEEDED, transaction_ref=str(uuid.uuid4())),
    ):
        assert await deliver(db, deps, stripe, forged) == Applied.UNTRUSTED
    assert db.state.invoices[invoice_id].status == "open"
    assert payment(db, intent).status == "processing"
    assert await balance_of(db, user) == 0
    assert db.events_of(ev.INVOICE_PAID) == []


async def test_a_failed_card_payment_leaves_the_invoice_open_and_payable_again(
    db: FakeDatabase, deps: Deps, stripe: CannedGateway
) -> None:
    user = new_user()
    invoice_id = await an_invoice(db, deps, user)
    intent, _ = await started(db, deps, user, invoice_id)
    failed = payment_event(payment(db, intent), PaymentOutcome.FAILED)
    assert await deliver(db, deps, stripe, failed) == Applied.APPLIED
    assert db.state.invoices[invoice_id].status == "open"
    second, reply = await started(db, deps, user, invoice_id)  # no longer in flight
    assert second.id != intent.id
    assert reply.payment is not None


async def test_refusals_other_users_invoice_not_open_in_flight_free_unconfigured(
    db: FakeDatabase, deps: Deps
) -> None:
    user, other = new_user(), new_user()
    invoice_id = await an_invoice(db, deps, user)
    with pytest.raises(NotFound) as theirs:
        await run(db, invoices.pay_invoice, by_card(other, invoice_id), deps)
    with pytest.raises(NotFound) as missing:
        await run(db, invoices.pay_invoice, by_card(other, uuid.uuid4()), deps)
    assert theirs.value.message.startswith("no invoice")
    assert missing.value.code == theirs.value.code
    await started(db, deps, user, invoice_id)
    with pytest.raises(InvalidState, match="in flight"):
        await run(db, invoices.pay_invoice, by_card(user, invoice_id, "yookassa"), deps)
    void = VoidInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, reason="x")
    with pytest.raises(InvalidState, match="in flight"):
        await run(db, invoice_lifecycle.void_invoice, void, deps)
    off = MarkInvoiceUncollectible(idempotency_key=key(), user_id=user, invoice_id=invoice_id)
    with pytest.raises(InvalidState, match="in flight"):
        await run(db, invoice_lifecycle.mark_uncollectible, off, deps)
    assert db.state.invoices[invoice_id].status == "open"
    assert len([t for t in db.state.transactions.values() if t.user_id == user]) == 1
    voided = await an_invoice(db, deps, user)
    void = VoidInvoice(idempotency_key=key(), user_id=user, invoice_id=voided, reason="x")
    await run(db, invoice_lifecycle.void_invoice, void, deps)
    with pytest.raises(InvalidState):
        await run(db, invoices.pay_invoice, by_card(user, voided), deps)
    free = await an_invoice(db, deps, user, "0.00")
    with pytest.raises(InvalidInput):
        await run(db, invoices.pay_invoice, by_card(user, free), deps)
    no_stripe = Deps(Gateways({"yookassa": CannedGateway("yookassa")}, "yookassa"), Decimal(0))
    with pytest.raises(ProviderError):
        await run(db, invoices.pay_invoice, by_card(user, await an_invoice(db, deps, user)),
                  no_stripe)  # fmt: skip


def test_provider_fields_are_refused_with_the_balance() -> None:
    with pytest.raises(ValidationError):
        by_card("u", uuid.uuid4(), "balance", return_url="https://shop.example/back")
    with pytest.raises(ValidationError):
        by_card("u", uuid.uuid4(), "sandbox")


async def test_paid_from_the_balance_meanwhile_the_confirmation_stays_on_the_balance(
    db: FakeDatabase, deps: Deps, stripe: CannedGateway
) -> None:
    user = new_user()
    invoice_id = await an_invoice(db, deps, user, "20.00")
    intent, _ = await started(db, deps, user, invoice_id)
    await deposit(db, deps, user, "20.00")
    paid = await run(db, invoices.pay_invoice, from_balance(user, invoice_id), deps)
    assert paid.status == "paid"
    assert await balance_of(db, user) == 0
    event = payment_event(payment(db, intent), PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, stripe, event) == Applied.APPLIED
    assert await balance_of(db, user) == 2000  # the card's money: credited, never lost
    assert len(db.events_of(ev.INVOICE_PAID)) == 1
    assert [k for k in kinds(db, user) if k[0] == "invoice_payment"] == [
        ("invoice_payment", "completed", 2000)
    ]  # paid once
    assert await deliver(db, deps, stripe, payment_event(payment(db, intent),
                         PaymentOutcome.SUCCEEDED)) == Applied.STALE  # fmt: skip
    assert await balance_of(db, user) == 2000  # never twice


async def test_a_failed_renewals_invoice_paid_by_card_restarts_the_subscription(
    db: FakeDatabase, deps: Deps, stripe: CannedGateway, clock: ManualClock
) -> None:
    user = new_user()
    plan = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "price": money("10.00"),
         "interval": "month"}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, plan, deps)
    await deposit(db, deps, user, "10.00")
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="balance"
    )
    created = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(created, SubscriptionCreated)
    sub = created.subscription.id
    due = db.state.subscriptions[sub].current_period_end
    assert due is not None
    clock.set(due)
    assert await run(db, renewals.renew_next, [], deps) == "failed"
    [unpaid] = [i for i in db.state.invoices.values() if i.subscription_id == sub and
                i.status == "open"]  # fmt: skip
    intent, _ = await started(db, deps, user, unpaid.id)
    event = payment_event(payment(db, intent), PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, stripe, event) == Applied.APPLIED
    state = db.state.subscriptions[sub]
    assert (state.status, state.paid_periods) == ("active", 2)
    assert db.state.invoices[unpaid.id].status == "paid"
    assert [e["subscription_id"] for e in db.events_of(ev.SUBSCRIPTION_RENEWED)] == [str(sub)]
    assert await balance_of(db, user) == 0
