"""Invoice handlers: create (command or `order.created`), pay from the balance, get."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from billing_contracts import events as ev
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceOut,
    InvoicePage,
    InvoicePayResult,
    PayInvoice,
)
from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.orders import OrderCreated
from billing_worker.db.intents import Intent
from billing_worker.db.invoices import InvoiceRow, NewInvoice
from billing_worker.domain.discounts import Coupon
from billing_worker.domain.errors import (
    BillingError,
    InvalidState,
    Unprocessable,
)
from billing_worker.domain.invoices import PricedItem, issue, price, transition
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.money import format_minor
from billing_worker.domain.paging import decode_cursor, encode_cursor
from billing_worker.domain.taxes import TaxRate
from billing_worker.handlers import invoice_cards, views
from billing_worker.handlers.coupons import usable
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.invoice_lifecycle import pay_period_invoice
from billing_worker.handlers.invoice_views import invoice_event, invoice_out, own_invoice
from billing_worker.handlers.taxes import rates_of
from billing_worker.handlers.wallet import refusal
from billing_worker.ports import UnitOfWork


async def create_invoice(command: CreateInvoice, uow: UnitOfWork, deps: Deps) -> InvoiceOut:
    """Issue an invoice; an order that already has one is refused with `invalid_state`."""
    taxes = await rates_of([line.tax_rate for line in command.lines], uow)
    coupon = None if command.coupon is None else await usable(uow, command.coupon, command.currency)
    new = _new_invoice(
        command.user_id, command.currency, command.lines, uow,
        order_id=command.order_id, due_at=command.due_at, taxes=taxes, coupon=coupon,
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
    taxes: Sequence[TaxRate | None] = (),
    coupon: Coupon | None = None,
) -> NewInvoice:
    return NewInvoice(
        id=uuid.uuid4(),
        user_id=user_id,
        order_id=order_id,
        status=issue().value,  # draft -> open at once: it is payable as soon as it exists
        priced=price(currency, items, taxes, coupon),
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


async def pay_invoice(
    command: PayInvoice, uow: UnitOfWork, deps: Deps
) -> InvoicePayResult | Intent:
    """Pay an open (or written-off) invoice of the user from the user's balance in the
    invoice currency, or by card (`invoice_cards`: a provider payment, two-phase); a
    subscription period's invoice is paid as its dunning would."""
    if command.source != "balance":
        return await invoice_cards.start(command, uow, deps)
    return _paid(await _pay_from_balance(command, uow, deps))


async def pay_many(
    commands: Sequence[PayInvoice], uow: UnitOfWork, deps: Deps
) -> list[InvoicePayResult | BillingError]:
    """Pays from the balance in ONE transaction (coalesced), each exactly as `pay_invoice`
    and in a savepoint of its own: a refusal (`insufficient_funds` once the invoice was
    claimed, `invalid_state`, `not_found`) rolls back that pay alone. They run grouped
    by user (in arrival order within a user's, who as with withdrawals has first call
    on the funds), so two batches take the users' accounts in one order."""
    outcomes: dict[int, InvoicePayResult | BillingError] = {}
    for i in sorted(range(len(commands)), key=lambda i: commands[i].user_id):
        if commands[i].source != "balance":  # the route sends card pays alone
            raise TypeError("only pays from the balance are coalesced")
        try:
            async with uow.savepoint():
                outcomes[i] = _paid(await _pay_from_balance(commands[i], uow, deps))
        except BillingError as refusal:
            outcomes[i] = refusal
    return [outcomes[i] for i in range(len(commands))]


def _paid(invoice: InvoiceOut) -> InvoicePayResult:
    return InvoicePayResult(**invoice.model_dump())


async def _pay_from_balance(command: PayInvoice, uow: UnitOfWork, deps: Deps) -> InvoiceOut:
    invoice = await own_invoice(uow, command.invoice_id, command.user_id)
    if invoice.subscription_id is not None:
        return invoice_out(await pay_period_invoice(invoice, uow, deps))
    source = Status(invoice.status)
    transition(source, Status.PAID)
    # The conditional UPDATE claims the invoice first: a concurrent pay waits on its row and
    # then finds it paid, so it is refused with invalid_state and never charges.
    paid = await uow.invoices.move(invoice.id, source, Status.PAID, uow.clock())
    if paid is None:
        current = await own_invoice(uow, command.invoice_id, command.user_id)
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
        return invoice_out(await own_invoice(uow, query.invoice_id, query.user_id))
    after = decode_cursor(query.cursor) if query.cursor else None
    rows = await uow.invoices.page(query.user_id, query.limit + 1, after)
    page, more = rows[: query.limit], len(rows) > query.limit
    return InvoicePage(
        items=[invoice_out(row) for row in page],
        next_cursor=_cursor(page[-1]) if more else None,
    )


def _cursor(row: InvoiceRow) -> str:
    return encode_cursor(row.created_at, row.id)
