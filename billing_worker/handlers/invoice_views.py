"""Invoices as callers see them: one of the user's, the reply object, the events' data."""

from __future__ import annotations

from uuid import UUID

from billing_contracts.area_events import InvoiceEvent
from billing_contracts.coupons import DiscountOut
from billing_contracts.invoices import InvoiceLineOut, InvoiceOut
from billing_contracts.invoices import InvoiceStatus as Status
from billing_worker.db.invoices import InvoiceRow
from billing_worker.domain.errors import NotFound
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.money import to_wire
from billing_worker.domain.taxes import format_percent
from billing_worker.ports import UnitOfWork


async def own_invoice(uow: UnitOfWork, invoice_id: UUID, user_id: str) -> InvoiceRow:
    """The user's invoice; another user's is refused exactly like one that does not exist
    (the same code, message and details), so a caller learns nothing of others' ids."""
    invoice = await uow.invoices.by_id(invoice_id)
    if invoice is None or invoice.user_id != user_id:
        raise NotFound(f"no invoice {invoice_id}", invoice_id=str(invoice_id))
    return invoice


def _lines(row: InvoiceRow) -> list[InvoiceLineOut]:
    return [
        InvoiceLineOut(
            description=line.description,
            quantity=line.quantity,
            unit_price=to_wire(abs(line.unit_price_minor), row.currency),
            amount=to_wire(abs(line.amount_minor), row.currency),
            tax_rate=line.tax_rate_code,
            tax_percent=None if line.tax_percent is None else format_percent(line.tax_percent),
            tax_inclusive=line.tax_inclusive,
            tax=to_wire(line.tax_minor, row.currency),
            discount=to_wire(line.discount_minor, row.currency),
            proration=line.proration or None,
            credit=(line.amount_minor < 0) or None,
        )
        for line in row.lines
    ]


def _lifecycle(row: InvoiceRow) -> dict[str, object]:
    """The fields added with the invoice lifecycle, tax rates and coupons, alike in the
    reply and the events."""
    return {
        "subscription_id": row.subscription_id,
        "period_index": row.period_index,
        "overdue_at": row.overdue_at,
        "voided_at": row.voided_at,
        "uncollectible_at": row.uncollectible_at,
        "reason": row.status_reason,
        "subtotal": to_wire(row.subtotal_minor, row.currency),
        "tax": to_wire(row.tax_minor, row.currency),
        "discount": to_wire(row.discount_minor, row.currency),
        "discounts": _discounts(row),
    }


def _discounts(row: InvoiceRow) -> list[DiscountOut]:
    """The coupon the invoice was discounted by (its copy of the terms), if any."""
    if row.coupon_code is None:
        return []
    percent, off = row.coupon_percent_off, row.coupon_amount_off_minor
    return [
        DiscountOut(
            coupon=row.coupon_code,
            percent_off=None if percent is None else format_percent(percent),
            amount_off=None if off is None else to_wire(off, row.currency),
            amount=to_wire(row.discount_minor, row.currency),
        )
    ]


def invoice_out(row: InvoiceRow) -> InvoiceOut:
    return InvoiceOut.model_validate(
        {
            "id": row.id,
            "number": row.number,
            "user_id": row.user_id,
            "order_id": row.order_id,
            "status": Status(row.status),
            "currency": row.currency,
            "lines": _lines(row),
            "total": to_wire(row.total_minor, row.currency),
            "due_at": row.due_at,
            "paid_at": row.paid_at,
            "stripe_invoice_id": row.stripe_invoice_id,
            **_lifecycle(row),
        }
    )


def invoice_event(type_: str, row: InvoiceRow) -> DomainEvent:
    data = InvoiceEvent.model_validate(
        {
            "invoice_id": row.id,
            "number": row.number,
            "user_id": row.user_id,
            "order_id": row.order_id,
            "status": Status(row.status),
            "currency": row.currency,
            "lines": _lines(row),
            "total": to_wire(row.total_minor, row.currency),
            "due_at": row.due_at,
            "paid_at": row.paid_at,
            **_lifecycle(row),
        }
    )
    return DomainEvent(type_, data.model_dump(mode="json"))
