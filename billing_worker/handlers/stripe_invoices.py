"""A mirror invoice for every paid Stripe invoice of a Stripe-run subscription.

Stripe numbers and sends its own invoices; the worker writes a copy in our gap-free
sequence when Stripe confirms one paid (`invoice.paid`, re-read at Stripe before it is
believed), whatever its `billing_reason` (the first period, a renewal, a proration of a
plan change): `paid` at once, with `invoice.created` and `invoice.paid`. Its lines are
Stripe's (descriptions, quantities, amounts; a proration's credit line is negative and
marked `proration`), its tax Stripe's invoice-level tax, its total Stripe's
`amount_paid`, its subtotal the sum of the lines. It is deduplicated by the Stripe
invoice id (`invoices.stripe_invoice_id`, unique): redelivered or duplicated webhooks,
and the several events that tell of one invoice, write one. No wallet money moves:
Stripe charged the card (the charge is in the ledger as the subscription's
`subscription_charge`, `stripe_subscriptions._record_invoice`).
"""

from __future__ import annotations

import logging
import uuid

from billing_contracts import events as ev
from billing_contracts.invoices import InvoiceStatus as Status
from billing_worker.db.invoices import NewInvoice
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.events import ProviderInvoice
from billing_worker.domain.invoices import Line, Priced
from billing_worker.handlers.invoice_views import invoice_event
from billing_worker.ports import UnitOfWork

log = logging.getLogger(__name__)
_IDS = uuid.UUID("7d7e33c4-6f35-4f0b-9b1f-52a1d8a3c0e1")  # mirror ids: uuid5 of Stripe's id


def mirror_lines(invoice: ProviderInvoice) -> tuple[Line, ...]:
    """Stripe's lines as ours: quantity x unit price = amount when it divides, else one
    unit of the whole amount (Stripe's unit amounts can be fractional cents)."""
    lines = []
    for line in invoice.lines:
        quantity = line.quantity if line.amount_minor % line.quantity == 0 else 1
        lines.append(Line(
            line.description[:500], quantity, line.amount_minor // quantity, line.amount_minor,
            proration=line.proration,
        ))  # fmt: skip
    return tuple(lines)


async def mirror(invoice: ProviderInvoice, sub: SubscriptionRow, uow: UnitOfWork) -> bool:
    """Write the mirror of a paid Stripe invoice once; False when it exists already.

    The caller holds the subscription's row lock, so two deliveries for one invoice
    queue here and the second finds the first's mirror; the unique column backs it."""
    if await uow.invoices.by_stripe_invoice(invoice.ref) is not None:
        return False
    lines = mirror_lines(invoice)
    subtotal = sum(line.amount_minor for line in lines)
    if subtotal < 0:  # a net credit (Stripe keeps it on the customer's balance there)
        log.warning("Stripe invoice %s is a net credit: no mirror is written", invoice.ref)
        return False
    priced = Priced(
        currency=invoice.currency, lines=lines,
        subtotal_minor=subtotal,
        total_minor=invoice.amount_paid_minor, tax_minor=invoice.tax_minor,
    )  # fmt: skip
    row = await uow.invoices.create(
        NewInvoice(
            id=uuid.uuid5(_IDS, invoice.ref), user_id=sub.user_id, order_id=None,
            status=Status.PAID.value, priced=priced, due_at=None, created_at=uow.clock(),
            subscription_id=sub.id, stripe_invoice_id=invoice.ref,
        )
    )  # fmt: skip
    assert row is not None  # only an order's invoice can be refused as a duplicate
    uow.emit(invoice_event(ev.INVOICE_CREATED, row))
    uow.emit(invoice_event(ev.INVOICE_PAID, row))
    return True
