"""The invoices' SQL: gap-free numbering, one invoice per order, conditional status moves.

The number is taken with an upsert on the year's `number_sequences` row in the invoice's
own transaction: the row lock queues concurrent creators (on every replica) and a
rollback gives the number back, so numbers are strictly increasing and gap-free per year.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from billing_worker.domain.invoices import NUMBER_SEQUENCE, Line, Priced, invoice_number


@dataclass(frozen=True, slots=True)
class NewInvoice:
    id: UUID
    user_id: str
    order_id: str | None
    status: str
    priced: Priced
    due_at: datetime | None
    created_at: datetime
    subscription_id: UUID | None = None  # with period_index: the period it bills
    period_index: int | None = None
    stripe_invoice_id: str | None = None  # a Stripe invoice's mirror (its subscription's)


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    id: UUID
    number: str
    user_id: str
    order_id: str | None
    status: str
    currency: str
    subtotal_minor: int
    total_minor: int
    due_at: datetime | None
    paid_at: datetime | None
    created_at: datetime
    subscription_id: UUID | None = None
    period_index: int | None = None
    overdue_at: datetime | None = None
    voided_at: datetime | None = None
    uncollectible_at: datetime | None = None
    status_reason: str | None = None  # why it was voided or written off
    tax_minor: int = 0  # the sum of the lines' taxes: total = subtotal - discount + tax
    discount_minor: int = 0  # the sum of the lines' discounts (coupons, migration 0016)
    coupon_code: str | None = None  # the coupon's code and terms as the invoice was issued
    coupon_percent_off: Decimal | None = None
    coupon_amount_off_minor: int | None = None
    stripe_invoice_id: str | None = None  # the Stripe invoice this one mirrors
    lines: tuple[Line, ...] = ()


_ENSURE_USER = """
INSERT INTO billing_users (id, user_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING
"""

_NEXT_NUMBER = """
INSERT INTO number_sequences (name, year, last_value) VALUES ($1, $2, 1)
ON CONFLICT (name, year) DO UPDATE SET last_value = number_sequences.last_value + 1
RETURNING last_value
"""

_INSERT_INVOICE = """
WITH invoice AS (
    INSERT INTO invoices (
        id, number, user_id, order_id, status, currency, subtotal_minor, total_minor,
        due_at, created_at, updated_at, subscription_id, period_index, tax_minor,
        discount_minor, coupon_code, coupon_percent_off, coupon_amount_off_minor,
        stripe_invoice_id, paid_at
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $15, $16, $17, $22, $23, $24, $25,
              $27, CASE WHEN $5 = 'paid' THEN $10::timestamptz END)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id
), lines AS (
    INSERT INTO invoice_lines (
        invoice_id, position, description, quantity, unit_price_minor, amount_minor,
        tax_rate_code, tax_percent, tax_inclusive, tax_minor, discount_minor, proration
    )
    SELECT invoice.id, line.position - 1, line.description, line.quantity, line.unit_price,
           line.amount, line.tax_rate_code, line.tax_percent, line.tax_inclusive, line.tax,
           line.discount, line.proration
    FROM invoice,
         unnest($11::text[], $12::int[], $13::bigint[], $14::bigint[], $18::text[],
                $19::numeric[], $20::boolean[], $21::bigint[], $26::bigint[], $28::boolean[])
             WITH ORDINALITY AS line(description, quantity, unit_price, amount, tax_rate_code,
                                     tax_percent, tax_inclusive, tax, discount, proration,
                                     position)
)
SELECT id FROM invoice
"""

_COLUMNS = (
    "id, number, user_id, order_id, status, currency, subtotal_minor, total_minor, "
    "due_at, paid_at, created_at, subscription_id, period_index, overdue_at, voided_at, "
    "uncollectible_at, status_reason, tax_minor, discount_minor, coupon_code, "
    "coupon_percent_off, coupon_amount_off_minor, stripe_invoice_id"
)

# Each status stamps its own moment; a reason (void, uncollectible) is kept, a later
# payment of a written-off invoice keeps the write-off's.
_MOVE = f"""
UPDATE invoices
SET status = $3, updated_at = $4,
    paid_at = CASE WHEN $3 = 'paid' THEN $4 ELSE paid_at END,
    voided_at = CASE WHEN $3 = 'void' THEN $4 ELSE voided_at END,
    uncollectible_at = CASE WHEN $3 = 'uncollectible' THEN $4 ELSE uncollectible_at END,
    status_reason = coalesce($5, status_reason)
WHERE id = $1 AND status = $2
RETURNING {_COLUMNS}
"""  # noqa: S608 - only constant column names are formatted in

# The overdue job: open invoices past their due date not yet announced, skipping those a
# payment or a void holds locked (they are no longer open once it commits). Two workers
# can never both stamp one: the second finds `overdue_at` set, or skips the row.
_OVERDUE = f"""
UPDATE invoices SET overdue_at = $1, updated_at = $1
WHERE id IN (
    SELECT id FROM invoices
    WHERE status = 'open' AND overdue_at IS NULL AND due_at IS NOT NULL AND due_at <= $1
    ORDER BY due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING {_COLUMNS}
"""  # noqa: S608 - only constant column names are formatted in

# A provider charge of the subscription is still in flight (the scheduler's own test).
_CHARGE_IN_FLIGHT = """
SELECT EXISTS (SELECT 1 FROM transactions
               WHERE subscription_id = $1 AND status IN ('created', 'processing'))
"""

# A card payment of the invoice (`billing.invoice.pay` by a provider) not settled yet.
_CARD_IN_FLIGHT = """
SELECT EXISTS (SELECT 1 FROM transactions
               WHERE invoice_id = $1 AND kind = 'deposit' AND status IN ('created', 'processing'))
"""

_LINE_COLUMNS = (
    "description", "quantity", "unit_price_minor", "amount_minor", "tax_rate_code",
    "tax_percent", "tax_inclusive", "tax_minor", "discount_minor", "proration",
)  # fmt: skip
_LINES = f"""
SELECT invoice_id, {", ".join(_LINE_COLUMNS)} FROM invoice_lines
WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id, position
"""  # noqa: S608 - only constant column names are formatted in


class _OrderAlreadyInvoiced(Exception):
    """Rolls the savepoint back, and with it the number this attempt took."""


def discount_columns(priced: Priced) -> dict[str, Any]:
    """The invoice's discount and its copy of the coupon, in the columns' order."""
    discount = priced.discount
    return {
        "discount_minor": priced.discount_minor,
        "coupon_code": None if discount is None else discount.coupon_code,
        "coupon_percent_off": None if discount is None else discount.percent_off,
        "coupon_amount_off_minor": None if discount is None else discount.amount_off_minor,
    }


def _row(record: Any, lines: tuple[Line, ...] = ()) -> InvoiceRow:
    values = {name: record[name] for name in _COLUMNS.split(", ")}
    return InvoiceRow(**values, lines=lines)


class SqlInvoices:
    """Invoices and their lines, in one database transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def next_number(self, year: int) -> int:
        """Take the next number of `year`; it stays taken only if the transaction commits."""
        value = await self._db.fetchval(_NEXT_NUMBER, NUMBER_SEQUENCE, year)
        return int(value)

    async def create(self, new: NewInvoice) -> InvoiceRow | None:
        """Insert a numbered invoice with its lines; None if its order is already invoiced."""
        await self._db.execute(_ENSURE_USER, uuid4(), new.user_id)
        year = new.created_at.astimezone(UTC).year
        try:
            async with self._db.transaction():  # a savepoint inside the command's transaction
                # Taken last, so the sequence row stays locked only until the commit.
                number = invoice_number(year, await self.next_number(year))
                if await self._insert(new, number) is None:
                    raise _OrderAlreadyInvoiced
        except _OrderAlreadyInvoiced:
            return None
        priced = new.priced
        return InvoiceRow(
            id=new.id, number=number, user_id=new.user_id, order_id=new.order_id,
            status=new.status, currency=priced.currency, subtotal_minor=priced.subtotal_minor,
            total_minor=priced.total_minor, due_at=new.due_at,
            paid_at=new.created_at if new.status == "paid" else None,
            stripe_invoice_id=new.stripe_invoice_id,
            created_at=new.created_at, subscription_id=new.subscription_id,
            period_index=new.period_index, tax_minor=priced.tax_minor, lines=priced.lines,
            **discount_columns(priced),
        )  # fmt: skip

    async def _insert(self, new: NewInvoice, number: str) -> UUID | None:
        priced, lines = new.priced, new.priced.lines
        inserted = await self._db.fetchval(
            _INSERT_INVOICE,
            new.id, number, new.user_id, new.order_id, new.status, priced.currency,
            priced.subtotal_minor, priced.total_minor, new.due_at, new.created_at,
            [line.description for line in lines], [line.quantity for line in lines],
            [line.unit_price_minor for line in lines], [line.amount_minor for line in lines],
            new.subscription_id, new.period_index, priced.tax_minor,
            [line.tax_rate_code for line in lines], [line.tax_percent for line in lines],
            [line.tax_inclusive for line in lines], [line.tax_minor for line in lines],
            *discount_columns(priced).values(), [line.discount_minor for line in lines],
            new.stripe_invoice_id, [line.proration for line in lines],
        )  # fmt: skip
        return None if inserted is None else UUID(str(inserted))

    async def by_id(self, invoice_id: UUID, *, lock: bool = False) -> InvoiceRow | None:
        """The invoice; `lock` holds its row (a payment, a void, a card payment's start)."""
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM invoices WHERE id = $1"  # noqa: S608
            + (" FOR UPDATE" if lock else ""),
            invoice_id,
        )
        return None if record is None else (await self._with_lines([record]))[0]

    async def by_stripe_invoice(self, stripe_invoice_id: str) -> InvoiceRow | None:
        """The mirror of a Stripe invoice, if it was written."""
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM invoices WHERE stripe_invoice_id = $1",  # noqa: S608
            stripe_invoice_id,
        )
        return None if record is None else (await self._with_lines([record]))[0]

    async def by_order(self, order_id: str) -> InvoiceRow | None:
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM invoices WHERE order_id = $1",  # noqa: S608
            order_id,
        )
        return None if record is None else (await self._with_lines([record]))[0]

    async def of_period(
        self, subscription_id: UUID, period_index: int, *, lock: bool = False
    ) -> InvoiceRow | None:
        """The invoice of one subscription period, if it has one."""
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM invoices WHERE subscription_id = $1 AND period_index = $2"  # noqa: S608
            + (" FOR UPDATE" if lock else ""),
            subscription_id,
            period_index,
        )
        return None if record is None else (await self._with_lines([record]))[0]

    async def open_of_subscription(self, subscription_id: UUID) -> list[InvoiceRow]:
        """The subscription's open period invoices (at most one: its unpaid period's), locked."""
        records = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM invoices WHERE subscription_id = $1 AND status = 'open' "  # noqa: S608
            "ORDER BY period_index FOR UPDATE",
            subscription_id,
        )
        return await self._with_lines(list(records))

    async def charge_in_flight(self, subscription_id: UUID) -> bool:
        """A provider charge of the subscription is created or processing."""
        return bool(await self._db.fetchval(_CHARGE_IN_FLIGHT, subscription_id))

    async def card_payment_in_flight(self, invoice_id: UUID) -> bool:
        """A card payment (a provider deposit) of the invoice is created or processing."""
        return bool(await self._db.fetchval(_CARD_IN_FLIGHT, invoice_id))

    async def move(
        self, invoice_id: UUID, source: str, target: str, at: datetime, reason: str | None = None
    ) -> InvoiceRow | None:
        """Move the invoice if it is still in `source` (one conditional UPDATE); else None."""
        record = await self._db.fetchrow(_MOVE, invoice_id, source, target, at, reason)
        return None if record is None else (await self._with_lines([record]))[0]

    async def mark_overdue(self, now: datetime, limit: int) -> list[InvoiceRow]:
        """Stamp `overdue_at` on up to `limit` open invoices past their due date; those."""
        return await self._with_lines(list(await self._db.fetch(_OVERDUE, now, limit)))

    async def page(
        self, user_id: str, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[InvoiceRow]:
        """Newest first; `after` is the (created_at, id) of the last invoice already seen."""
        sql = f"""
            SELECT {_COLUMNS} FROM invoices
            WHERE user_id = $1 AND (created_at, id) < (coalesce($2::timestamptz, 'infinity'), $3)
            ORDER BY created_at DESC, id DESC LIMIT $4
        """  # noqa: S608 - only constant column names are formatted in
        after_at, after_id = after if after else (None, None)
        return await self._with_lines(await self._db.fetch(sql, user_id, after_at, after_id, limit))

    async def _with_lines(self, records: list[Any]) -> list[InvoiceRow]:
        found: dict[UUID, list[Line]] = {record["id"]: [] for record in records}
        for line in await self._db.fetch(_LINES, list(found)):
            found[line["invoice_id"]].append(Line(*(line[name] for name in _LINE_COLUMNS)))
        return [_row(record, tuple(found[record["id"]])) for record in records]
