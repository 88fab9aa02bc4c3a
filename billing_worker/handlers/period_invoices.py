"""An invoice for every paid period of the subscriptions the worker bills itself
(balance and YooKassa; Stripe bills its subscriptions with its own invoices, recorded as
`subscription_charge` transactions and not mirrored here).

- A period paid (first charge, renewal, trial conversion, dunning recovery, a YooKassa
  confirmation, `billing.invoice.pay` of its invoice) gets its invoice in the charge's own
  transaction: issued (`invoice.created`) and paid (`invoice.paid`) at once, or, when a
  failed charge left it open, that same invoice paid.
- The first failed charge of a period issues its invoice `open`; the next attempts find
  it. It has no `due_at`: dunning decides what happens to it.
- A subscription that ends with its period unpaid voids that invoice (`invoice.voided`).

One invoice per (subscription, period): the unique `uq_invoices_subscription_period`,
and the subscription's row lock, which every caller holds, orders the writers.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from billing_contracts.events import INVOICE_CREATED, INVOICE_PAID, INVOICE_VOIDED
from billing_contracts.invoices import InvoiceStatus as Status
from billing_worker.db.invoices import InvoiceRow, NewInvoice
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.discounts import Coupon
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.invoices import Line, Priced, issue, priced_lines
from billing_worker.domain.taxes import TaxRate
from billing_worker.handlers.invoice_views import invoice_event
from billing_worker.ports import UnitOfWork

_IDS = uuid.UUID("3c8f2d6a-91b4-4f0e-8a27-5d6e1f4b9c03")  # namespace of period invoice ids


def invoice_id(subscription_id: uuid.UUID, index: int) -> uuid.UUID:
    """The one invoice id of a period: a second creation collides on the primary key too."""
    return uuid.uuid5(_IDS, f"{subscription_id}:{index}")


def description(plan_name: str, start: datetime, end: datetime) -> str:
    return f"{plan_name}: {start:%Y-%m-%d} to {end:%Y-%m-%d}"


def period_priced(sub: SubscriptionRow, text: str = "") -> Priced:
    """A period's invoice as the plan's version prices it: the seats at the plan's price,
    less the subscription's coupon while it lasts (before tax), taxed at the rate the
    version copied (if any); its total is what the period costs."""
    plan = sub.plan
    line = Line(text, sub.quantity, plan.price_minor, plan.price_minor * sub.quantity)
    rate = None
    if plan.tax_rate_code is not None and plan.tax_percent is not None:
        rate = TaxRate(plan.tax_rate_code, "", plan.tax_percent, bool(plan.tax_inclusive))
    return priced_lines(plan.currency, [line], [rate], discounting(sub))


def discounting(sub: SubscriptionRow) -> Coupon | None:
    """The coupon that discounts the subscription's next charged period, if any."""
    redemption = sub.redemption
    if redemption is None or not redemption.applies:
        return None
    coupon = redemption.coupon
    if coupon.amount_off_minor is not None and coupon.currency != sub.plan.currency:
        return None  # redeem() refuses it; a plan moved to another currency drops it
    return coupon


def _priced(sub: SubscriptionRow, text: str, amount_minor: int) -> Priced:
    """The period's invoice when that is what was charged (its total), else one untaxed
    unit of the amount."""
    priced = period_priced(sub, text)
    (line,) = priced.lines
    if priced.total_minor == amount_minor and (
        sub.quantity > 1 or line.tax_rate_code or priced.discount is not None
    ):
        return priced
    return Priced(
        sub.plan.currency, (Line(text, 1, amount_minor, amount_minor),), amount_minor,
        amount_minor,
    )  # fmt: skip


async def unpaid(
    sub: SubscriptionRow,
    index: int,
    period: tuple[datetime, datetime],
    amount_minor: int,
    uow: UnitOfWork,
) -> InvoiceRow:
    """The period's invoice: the one a failed charge left, or issued now (`open`)."""
    existing = await uow.invoices.of_period(sub.id, index, lock=True)
    if existing is not None:
        return existing
    start, end = period
    priced = _priced(sub, description(sub.plan.name, start, end), amount_minor)
    new = NewInvoice(
        id=invoice_id(sub.id, index), user_id=sub.user_id, order_id=None,
        status=issue().value, priced=priced,
        due_at=None, created_at=uow.clock(), subscription_id=sub.id, period_index=index,
    )  # fmt: skip
    row = await uow.invoices.create(new)
    assert row is not None, "only an invoiced order makes create() return None"
    uow.emit(invoice_event(INVOICE_CREATED, row))
    return row


async def paid(
    sub: SubscriptionRow,
    index: int,
    period: tuple[datetime, datetime],
    amount_minor: int,
    uow: UnitOfWork,
) -> InvoiceRow:
    """The period was just paid: its invoice (issued now if need be) becomes `paid`."""
    invoice = await unpaid(sub, index, period, amount_minor, uow)
    moved = await uow.invoices.move(invoice.id, Status.OPEN, Status.PAID, uow.clock())
    if moved is None:  # void (the subscription ended) or paid: the period cannot be paid
        raise InvalidState(
            f"the invoice {invoice.number} of period {index} is {invoice.status}",
            status=invoice.status, invoice_id=str(invoice.id),
        )  # fmt: skip
    uow.emit(invoice_event(INVOICE_PAID, moved))
    return moved


async def void_unpaid(sub: SubscriptionRow, uow: UnitOfWork, *, reason: str) -> None:
    """The subscription ended: its open period invoice (if any) is voided."""
    for invoice in await uow.invoices.open_of_subscription(sub.id):
        voided = await uow.invoices.move(invoice.id, Status.OPEN, Status.VOID, uow.clock(), reason)
        if voided is not None:
            uow.emit(invoice_event(INVOICE_VOIDED, voided))
