"""Void, write-off and overdue on the fake unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.invoices import (
    CreateInvoice,
    MarkInvoiceUncollectible,
    PayInvoice,
    VoidInvoice,
)
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.handlers import invoice_lifecycle, invoices
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


def an_invoice(user: str, price: str = "20.00", due_at: datetime | None = None) -> CreateInvoice:
    line = {"description": "Consulting", "quantity": 1, "unit_price": money(price)}
    return CreateInvoice.model_validate(
        {"idempotency_key": key(), "user_id": user, "currency": "USD", "lines": [line],
         "due_at": due_at}
    )  # fmt: skip


def void(user: str, invoice_id: uuid.UUID, reason: str = "issued in error") -> VoidInvoice:
    return VoidInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, reason=reason)


def write_off(user: str, invoice_id: uuid.UUID, **extra: Any) -> MarkInvoiceUncollectible:
    return MarkInvoiceUncollectible(
        idempotency_key=key(), user_id=user, invoice_id=invoice_id, **extra
    )


def pay(user: str, invoice_id: uuid.UUID) -> PayInvoice:
    return PayInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, source="balance")


async def overdue(db: FakeDatabase, deps: Deps, limit: int = 100) -> int:
    return await run(db, invoice_lifecycle.mark_overdue, limit, deps)


async def test_a_void_invoice_keeps_its_number_and_can_no_longer_be_paid(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    clock.advance(minutes=1)
    voided = await run(db, invoice_lifecycle.void_invoice, void(user, invoice.id), deps)
    assert (voided.status, voided.number, voided.voided_at, voided.reason) == (
        "void", invoice.number, clock.now, "issued in error",
    )  # fmt: skip
    [event] = db.events_of(ev.INVOICE_VOIDED)
    assert (event["invoice_id"], event["status"], event["reason"]) == (
        str(invoice.id), "void", "issued in error",
    )  # fmt: skip
    with pytest.raises(InvalidState):
        await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    with pytest.raises(InvalidState):  # void is final
        await run(db, invoice_lifecycle.void_invoice, void(user, invoice.id), deps)
    assert await balance_of(db, user) == 5000
    assert len(db.events_of(ev.INVOICE_VOIDED)) == 1


async def test_a_paid_invoice_cannot_be_voided_or_written_off(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    with pytest.raises(InvalidState) as refused:
        await run(db, invoice_lifecycle.void_invoice, void(user, invoice.id), deps)
    assert refused.value.details == {"status": "paid", "requested": "void"}
    with pytest.raises(InvalidState):
        await run(db, invoice_lifecycle.mark_uncollectible, write_off(user, invoice.id), deps)
    assert db.state.invoices[invoice.id].status == "paid"
    assert db.events_of(ev.INVOICE_VOIDED) == db.events_of(ev.INVOICE_UNCOLLECTIBLE) == []


async def test_another_users_invoice_is_not_found_exactly_like_an_unknown_one(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, other = new_user(), new_user()
    invoice = await run(db, invoices.create_invoice, an_invoice(owner), deps)
    for invoice_id in (invoice.id, uuid.uuid4()):
        with pytest.raises(NotFound) as voiding:
            await run(db, invoice_lifecycle.void_invoice, void(other, invoice_id), deps)
        with pytest.raises(NotFound) as writing_off:
            await run(db, invoice_lifecycle.mark_uncollectible, write_off(other, invoice_id), deps)
        assert (voiding.value.message, voiding.value.details) == (
            writing_off.value.message, writing_off.value.details,
        ) == (f"no invoice {invoice_id}", {"invoice_id": str(invoice_id)})  # fmt: skip
    assert db.state.invoices[invoice.id].status == "open"


async def test_an_uncollectible_invoice_can_still_be_paid(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    command = write_off(user, invoice.id, reason="customer unreachable")
    written_off = await run(db, invoice_lifecycle.mark_uncollectible, command, deps)
    assert (written_off.status, written_off.uncollectible_at, written_off.reason) == (
        "uncollectible", clock.now, "customer unreachable",
    )  # fmt: skip
    assert len(db.events_of(ev.INVOICE_UNCOLLECTIBLE)) == 1
    with pytest.raises(InvalidState):  # written off is not voided
        await run(db, invoice_lifecycle.void_invoice, void(user, invoice.id), deps)
    await deposit(db, deps, user, "50.00")
    clock.advance(days=3)
    paid = await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert (paid.status, paid.paid_at) == ("paid", clock.now)
    assert paid.uncollectible_at == written_off.uncollectible_at
    assert await balance_of(db, user) == 3000
    assert [e["status"] for e in db.events_of(ev.INVOICE_PAID)] == ["paid"]


async def test_a_write_off_needs_no_reason(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    out = await run(db, invoice_lifecycle.mark_uncollectible, write_off(user, invoice.id), deps)
    assert (out.status, out.reason) == ("uncollectible", None)


async def test_an_open_invoice_past_its_due_date_is_announced_overdue_once(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    due = clock.now + timedelta(days=7)
    invoice = await run(db, invoices.create_invoice, an_invoice(user, due_at=due), deps)
    undated = await run(db, invoices.create_invoice, an_invoice(user), deps)
    assert await overdue(db, deps) == 0  # not due yet
    clock.set(due)
    assert await overdue(db, deps) == 1
    assert await overdue(db, deps) == 0  # once
    [event] = db.events_of(ev.INVOICE_OVERDUE)
    assert (event["invoice_id"], event["status"], event["overdue_at"]) == (
        str(invoice.id), "open", due.isoformat().replace("+00:00", "Z"),
    )  # fmt: skip
    assert db.state.invoices[invoice.id].overdue_at == due
    assert db.state.invoices[undated.id].overdue_at is None


async def test_paid_void_and_written_off_invoices_never_become_overdue(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    due = clock.now + timedelta(days=1)
    made = [
        (await run(db, invoices.create_invoice, an_invoice(user, due_at=due), deps)).id
        for _ in range(3)
    ]
    await run(db, invoices.pay_invoice, pay(user, made[0]), deps)
    await run(db, invoice_lifecycle.void_invoice, void(user, made[1]), deps)
    await run(db, invoice_lifecycle.mark_uncollectible, write_off(user, made[2]), deps)
    clock.advance(days=2)
    assert await overdue(db, deps) == 0
    assert db.events_of(ev.INVOICE_OVERDUE) == []


async def test_overdue_invoices_are_announced_in_batches_oldest_due_first(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    start = clock.now
    for days in (3, 1, 2):
        await run(
            db, invoices.create_invoice, an_invoice(user, due_at=start + timedelta(days=days)), deps
        )
    clock.advance(days=4)
    assert [await overdue(db, deps, limit=2), await overdue(db, deps, limit=2)] == [2, 1]
    dues = [e["due_at"] for e in db.events_of(ev.INVOICE_OVERDUE)]
    assert dues == sorted(dues)
