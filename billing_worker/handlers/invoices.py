"""Invoice handlers: create (command or `order.created`), pay from the balance, get."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable
from datetime import datetime

from billing_contracts import events as ev
from billing_contracts.area_events import InvoiceEvent
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceLineOut,
    InvoiceOut,
    InvoicePage,
    PayInvoice,
)
from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.orders import OrderCreated
from billing_worker.db.invoices import InvoiceRow, NewInvoice
from billing_worker.domain.errors import (
    BillingError,
    InvalidState,
    NotFound,
    Unprocessable,
)
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.invoices import PricedItem, issue, price, transition
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.money import format_minor, to_wire
from billing_worker.domain.paging import decode_cursor, encode_cursor
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.wallet import refusal
from billing_worker.ports import UnitOfWork


async def create_invoice(command: CreateInvoice, uow: UnitOfWork, deps: Deps) -> InvoiceOut:
    """Issue an invoice; an order that already has one is refused with `invalid_state`."""
    new = _new_invoice(
        command.user_id, command.currency, command.lines, uow,
        order_id=command.order_id, due_at=command.due_at,
    )  # fmt: skip
    # Its id derives from the key, like a transaction's: a retry whose idempotency record
    # expired collides with the invoice it created instead of issuing a second one.
    new = dataclasses.replace(
        new, id=derived_id("invoice", command.user_id, command.idempotency_key)
    )
    if command.order_id is not None:
        await _refuse_if_invoiced(uow, command.order_id)
    row = await uow.invoices.create(new)
    if row is None:  # a concurrent creation for the same order won
        await _refuse_if_invoiced(uow, str(command.order_id))
        raise InvalidState("the order was invoiced concurrently", order_id=command.order_id)
    uow.emit(invoice_event(ev.INVOICE_CREATED, row))
    return invoice_out(row)


async def create_invoice_for_order(order: OrderCreated, uow: UnitOfWork, deps: Deps) -> None:
    """`order.created` -> one invoice per `order_id`; a redelivered order changes nothing."""
    try:
        new = _new_invoice(order.user_id, order.currency, order.items, uow, order_id=order.order_id)
    except BillingError as refused:  # nobody to reply to: an operator has to look at it
        raise Unprocessable(
            f"order {order.order_id}: {refused.code.value}: {refused.message}"
        ) from None
    if await uow.invoices.by_order(order.order_id) is not None:
        return  # already invoiced: this is a redelivery or a duplicate
    row = await uow.invoices.create(new)
    if row is not None:  # None: a concurrent delivery of the same order invoiced it
        uow.emit(invoice_event(ev.INVOICE_CREATED, row))


def _new_invoice(
    user_id: str,
    currency: str,
    items: Iterable[PricedItem],
    uow: UnitOfWork,
    *,
    order_id: str | None,
    due_at: datetime | None = None,
) -> NewInvoice:
    return NewInvoice(
        id=uuid.uuid4(),
        user_id=user_id,
        order_id=order_id,
        status=issue().value,  # draft -> open at once: it is payable as soon as it exists
        priced=price(currency, items),
        due_at=due_at,
        created_at=uow.clock(),
    )


async def _refuse_if_invoiced(uow: UnitOfWork, order_id: str) -> None:
    existing = await uow.invoices.by_order(order_id)
    if existing is not None:
        raise InvalidState(
            f"order {order_id} already has invoice {existing.number}",
            order_id=order_id,
            invoice_id=str(existing.id),
            number=existing.number,
        )


async def pay_invoice(command: PayInvoice, uow: UnitOfWork, deps: Deps) -> InvoiceOut:
    """Pay an open invoice of the user from the user's balance in the invoice currency."""
    invoice = await _find(uow, command.invoice_id, command.user_id)
    transition(Status(invoice.status), Status.PAID)
    # The conditional UPDATE claims the invoice first: a concurrent pay waits on its row and
    # then finds it paid, so it is refused with invalid_state and never charges.
    paid = await uow.invoices.move(invoice.id, Status.OPEN, Status.PAID, uow.clock())
    if paid is None:
        current = await _find(uow, command.invoice_id, command.user_id)
        transition(Status(current.status), Status.PAID)
        raise InvalidState("the invoice changed while it was being paid", status=current.status)
    if paid.total_minor > 0:  # a free invoice is paid without moving money
        await _charge(paid, command.idempotency_key, uow, deps)
    uow.emit(invoice_event(ev.INVOICE_PAID, paid))
    return invoice_out(paid)


async def _charge(invoice: InvoiceRow, idempotency_key: str, uow: UnitOfWork, deps: Deps) -> None:
    currency, amount = invoice.currency, invoice.total_minor
    change = await uow.wallet.move_balance(
        invoice.user_id, currency, -amount, deps.low_balance_minor(currency)
    )
    if change is None:  # raising rolls the whole transaction back: the invoice stays open
        total = f"the invoice total {format_minor(amount, currency)}"
        raise await refusal(uow, invoice.user_id, currency, total, invoice_id=str(invoice.id))
    payment = Transaction.invoice_payment(
        derived_id("invoice.pay", invoice.user_id, idempotency_key), invoice.user_id,
        change.account_id, amount, currency, uow.clock(), invoice_id=invoice.id,
        number=invoice.number,
    )  # fmt: skip
    meta = json.dumps({"invoice_id": str(invoice.id), "invoice_number": invoice.number})
    row = await uow.wallet.record(payment, meta)
    uow.emit(views.payment_succeeded(row))
    if change.crossed_below:
        uow.emit(views.balance_low(invoice.user_id, currency, change))


async def get_invoices(query: GetInvoices, uow: UnitOfWork, deps: Deps) -> InvoiceOut | InvoicePage:
    """One of the user's invoices by id, or the user's invoices newest first, paged with an
    opaque cursor."""
    if query.invoice_id is not None:
        return invoice_out(await _find(uow, query.invoice_id, query.user_id))
    after = decode_cursor(query.cursor) if query.cursor else None
    rows = await uow.invoices.page(query.user_id, query.limit + 1, after)
    page, more = rows[: query.limit], len(rows) > query.limit
    return InvoicePage(
        items=[invoice_out(row) for row in page],
        next_cursor=_cursor(page[-1]) if more else None,
    )


async def _find(uow: UnitOfWork, invoice_id: uuid.UUID, user_id: str) -> InvoiceRow:
    """The user's invoice; another user's is refused exactly like one that does not exist
    (the same code, message and details), so a caller learns nothing of others' ids."""
    invoice = await uow.invoices.by_id(invoice_id)
    if invoice is None or invoice.user_id != user_id:
        raise NotFound(f"no invoice {invoice_id}", invoice_id=str(invoice_id))
    return invoice


def _cursor(row: InvoiceRow) -> str:
    return encode_cursor(row.created_at, row.id)


def _lines(row: InvoiceRow) -> list[InvoiceLineOut]:
    return [
        InvoiceLineOut(
            description=line.description,
            quantity=line.quantity,
            unit_price=to_wire(line.unit_price_minor, row.currency),
            amount=to_wire(line.amount_minor, row.currency),
        )
        for line in row.lines
    ]


def invoice_out(row: InvoiceRow) -> InvoiceOut:
    return InvoiceOut(
        id=row.id,
        number=row.number,
        user_id=row.user_id,
        order_id=row.order_id,
        status=Status(row.status),
        currency=row.currency,
        lines=_lines(row),
        total=to_wire(row.total_minor, row.currency),
        due_at=row.due_at,
        paid_at=row.paid_at,
    )


def invoice_event(type_: str, row: InvoiceRow) -> DomainEvent:
    data = InvoiceEvent(
        invoice_id=row.id,
        number=row.number,
        user_id=row.user_id,
        order_id=row.order_id,
        status=Status(row.status),
        currency=row.currency,
        lines=_lines(row),
        subtotal=to_wire(row.subtotal_minor, row.currency),
        total=to_wire(row.total_minor, row.currency),
        due_at=row.due_at,
        paid_at=row.paid_at,
    )
    return DomainEvent(type_, data.model_dump(mode="json"))
