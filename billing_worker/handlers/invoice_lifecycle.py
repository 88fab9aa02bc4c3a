"""The rest of an invoice's life: void, write off (uncollectible), overdue, and paying a
subscription period's invoice.

- `billing.invoice.void`: open -> void for good; the document and its number stay (the
  numbering is gap-free), it can no longer be paid. A paid invoice is `invalid_state`.
- `billing.invoice.mark-uncollectible`: open -> uncollectible, a write-off in the books;
  as at Stripe it can still be paid afterwards (`billing.invoice.pay`).
- Both are refused (`invalid_state`) for a subscription period's invoice, which follows
  its subscription: canceling the subscription voids it, a dunning attempt or a payment
  pays it.
- The overdue job stamps `overdue_at` on open invoices past their `due_at`, once
  (`invoice.overdue`); a paid, void or uncollectible invoice never gets it.

Each move is one conditional UPDATE on the invoice's status: a payment racing a void
ends one way only.
"""

from __future__ import annotations

from billing_contracts import events as ev
from billing_contracts.invoices import InvoiceOut, MarkInvoiceUncollectible, VoidInvoice
from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.invoices import InvoiceRow
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.invoices import transition
from billing_worker.domain.money import format_minor
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.invoice_views import invoice_event, invoice_out, own_invoice
from billing_worker.handlers.periods import charge_from_balance
from billing_worker.handlers.wallet import refusal
from billing_worker.ports import UnitOfWork


async def void_invoice(command: VoidInvoice, uow: UnitOfWork, deps: Deps) -> InvoiceOut:
    invoice = await own_invoice(uow, command.invoice_id, command.user_id)
    closed = await _close(invoice, Status.VOID, command.reason, ev.INVOICE_VOIDED, uow)
    return invoice_out(closed)


async def mark_uncollectible(
    command: MarkInvoiceUncollectible, uow: UnitOfWork, deps: Deps
) -> InvoiceOut:
    invoice = await own_invoice(uow, command.invoice_id, command.user_id)
    closed = await _close(
        invoice, Status.UNCOLLECTIBLE, command.reason, ev.INVOICE_UNCOLLECTIBLE, uow
    )
    return invoice_out(closed)


async def _close(
    invoice: InvoiceRow, target: Status, reason: str | None, event: str, uow: UnitOfWork
) -> InvoiceRow:
    source = Status(invoice.status)
    transition(source, target)
    if invoice.subscription_id is not None:
        raise InvalidState(
            f"invoice {invoice.number} bills a subscription period and follows its "
            "subscription: cancel the subscription to void it",
            status=invoice.status, subscription_id=str(invoice.subscription_id),
        )  # fmt: skip
    # The row lock orders this after a card payment's start (which holds it too): an
    # invoice a provider may be charging right now is neither voided nor written off.
    await uow.invoices.by_id(invoice.id, lock=True)
    if await uow.invoices.card_payment_in_flight(invoice.id):
        raise InvalidState(
            f"a card payment of invoice {invoice.number} is in flight; try again once it "
            "settles", status=invoice.status, invoice_id=str(invoice.id),
        )  # fmt: skip
    moved = await uow.invoices.move(invoice.id, source, target, uow.clock(), reason)
    if moved is None:  # a concurrent payment (or void) moved it first
        current = await own_invoice(uow, invoice.id, invoice.user_id)
        transition(Status(current.status), target)
        raise InvalidState("the invoice changed meanwhile", status=current.status)
    uow.emit(invoice_event(event, moved))
    return moved


async def mark_overdue(limit: int, uow: UnitOfWork, deps: Deps) -> int:
    """Announce up to `limit` open invoices past their due date (`invoice.overdue`, once
    each); how many."""
    rows = await uow.invoices.mark_overdue(uow.clock(), limit)
    for row in rows:
        uow.emit(invoice_event(ev.INVOICE_OVERDUE, row))
    return len(rows)


async def pay_period_invoice(invoice: InvoiceRow, uow: UnitOfWork, deps: Deps) -> InvoiceRow:
    """`billing.invoice.pay` of a subscription period's open invoice: exactly what a
    successful dunning attempt does (the period charged from the balance, marked paid,
    the subscription active again with `subscription.renewed`, the invoice paid), once,
    whoever wins: the subscription's row is locked first, as the scheduler locks it, and
    the period's charge row is unique."""
    assert invoice.subscription_id is not None
    sub = await uow.subscriptions.get(invoice.subscription_id, lock=True)
    current = await uow.invoices.by_id(invoice.id)  # as the lock's previous holder left it
    assert sub is not None
    assert current is not None
    transition(Status(current.status), Status.PAID)  # paid by the scheduler first, or void
    if current.period_index != sub.paid_periods or Sub(sub.status) is not Sub.PAST_DUE:
        raise InvalidState(
            f"period {current.period_index} of the subscription is not the one due",
            status=current.status, subscription_status=sub.status,
        )  # fmt: skip
    if await uow.invoices.charge_in_flight(sub.id):
        raise InvalidState(
            "a provider charge of this subscription is in flight; try again shortly",
            status=current.status,
        )
    if not await charge_from_balance(sub, uow, deps):
        total = f"the invoice total {format_minor(current.total_minor, current.currency)}"
        raise await refusal(uow, sub.user_id, current.currency, total, invoice_id=str(current.id))
    settled = await uow.invoices.by_id(invoice.id)
    assert settled is not None
    return settled
