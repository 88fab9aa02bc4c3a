"""Invoices without I/O: the state machine, pricing and numbering.

draft -> open -> paid | void | uncollectible, and uncollectible -> paid (a written-off
invoice can still be paid, as at Stripe). Any other move is refused with `InvalidState`
and changes nothing. Amounts are integer minor units; a line's amount is
quantity x unit price, exactly, its tax the rule of `domain/taxes.py`, and every amount
must fit a PostgreSQL BIGINT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.money import MAX_MINOR_UNITS, Money
from billing_worker.domain.discounts import Coupon
from billing_worker.domain.discounts import shares as discount_shares
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput
from billing_worker.domain.states import StateMachine
from billing_worker.domain.taxes import TaxRate, line_tax

MACHINE = StateMachine[Status](
    "invoice",
    {
        Status.DRAFT: frozenset({Status.OPEN}),
        Status.OPEN: frozenset({Status.PAID, Status.VOID, Status.UNCOLLECTIBLE}),
        Status.PAID: frozenset(),
        Status.VOID: frozenset(),
        Status.UNCOLLECTIBLE: frozenset({Status.PAID}),
    },
)
ALLOWED: Mapping[Status, frozenset[Status]] = MACHINE.allowed
TERMINAL = MACHINE.terminal

NUMBER_SEQUENCE = "invoice"  # the `number_sequences.name` of invoice numbers


can_move = MACHINE.can_move


def transition(source: Status, target: Status) -> Status:
    """Check one move and return the new status; raise `InvalidState` when refused."""
    return MACHINE.check(source, target)


def issue() -> Status:
    """A new invoice is a draft that is issued (opened) at once: its status after that."""
    return transition(Status.DRAFT, Status.OPEN)


class PricedItem(Protocol):
    """An invoice line or an order item as it arrives on the wire."""

    @property
    def description(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def unit_price(self) -> Money: ...


@dataclass(frozen=True, slots=True)
class Line:
    """`amount_minor` is quantity x unit price; a taxed line stores the rate it was issued
    with (code, percent, inclusive) and its tax, so a later change of the rate changes
    nothing issued."""

    description: str
    quantity: int
    unit_price_minor: int
    amount_minor: int
    tax_rate_code: str | None = None
    tax_percent: Decimal | None = None
    tax_inclusive: bool | None = None
    tax_minor: int = 0
    # Coupons (migration 0016): the line's share of the invoice's discount, taken off its
    # amount before tax (the tax is on amount - discount_minor).
    discount_minor: int = 0
    proration: bool = False  # a Stripe mirror's proration line: may be a credit

    @property
    def net_minor(self) -> int:
        """The line's part of the subtotal: its amount without the tax (before discount)."""
        return self.amount_minor - self.tax_minor if self.tax_inclusive else self.amount_minor

    @property
    def total_minor(self) -> int:
        """What the line adds to the invoice's total: net - discount + tax."""
        return self.net_minor - self.discount_minor + self.tax_minor


@dataclass(frozen=True, slots=True)
class Discount:
    """The coupon an invoice was discounted by, copied (terms and all) as issued, so a
    later change of the coupon rewrites nothing and the audit can recompute the shares."""

    coupon_code: str
    percent_off: Decimal | None
    amount_off_minor: int | None
    discount_minor: int


@dataclass(frozen=True, slots=True)
class Priced:
    """The lines of a new invoice with its sums: subtotal = the lines' nets, discount =
    the lines' shares of it, tax = their taxes, total = subtotal - discount + tax."""

    currency: str
    lines: tuple[Line, ...]
    subtotal_minor: int
    total_minor: int
    tax_minor: int = 0
    discount: Discount | None = None

    @property
    def discount_minor(self) -> int:
        return 0 if self.discount is None else self.discount.discount_minor


def price(
    currency: str,
    items: Iterable[PricedItem],
    taxes: Sequence[TaxRate | None] = (),
    coupon: Coupon | None = None,
) -> Priced:
    """Lines and totals in minor units; `taxes[i]` is line i's rate (none past its end),
    `coupon` the discount taken off before tax (`domain/discounts.py`). Refuses another
    currency and BIGINT overflow."""
    plain = [_line(position, currency, item) for position, item in enumerate(items)]
    return priced_lines(currency, plain, taxes, coupon)


def priced_lines(
    currency: str,
    plain: Sequence[Line],
    taxes: Sequence[TaxRate | None] = (),
    coupon: Coupon | None = None,
) -> Priced:
    """Untaxed, undiscounted lines discounted by `coupon` then taxed, with their sums."""
    if coupon is not None and coupon.amount_off_minor is not None and coupon.currency != currency:
        raise CurrencyMismatch(
            f"coupon {coupon.code} takes {coupon.currency} off, the invoice is in {currency}",
            coupon=coupon.code, currency=coupon.currency, invoice_currency=currency,
        )  # fmt: skip
    off = (
        discount_shares(coupon, [line.amount_minor for line in plain])
        if coupon is not None
        else [0] * len(plain)
    )
    lines = tuple(
        taxed(replace(line, discount_minor=off[i]), taxes[i] if i < len(taxes) else None)
        for i, line in enumerate(plain)
    )
    subtotal = sum(line.net_minor for line in lines)
    tax = sum(line.tax_minor for line in lines)
    discount_minor = sum(off)
    total = _fits(subtotal - discount_minor + tax, "the invoice total")
    discount = None
    if coupon is not None:
        discount = Discount(
            coupon.code, coupon.percent_off, coupon.amount_off_minor, discount_minor
        )
    return Priced(
        currency, lines, subtotal_minor=subtotal, total_minor=total, tax_minor=tax,
        discount=discount,
    )  # fmt: skip


def taxed(line: Line, rate: TaxRate | None) -> Line:
    """The line with its tax at `rate` (and a copy of the rate) on its amount less its
    discount; untaxed when None."""
    if rate is None:
        return line
    tax = line_tax(line.amount_minor - line.discount_minor, rate.percent, rate.inclusive)
    return replace(
        line, tax_rate_code=rate.code, tax_percent=rate.percent,
        tax_inclusive=rate.inclusive, tax_minor=tax,
    )  # fmt: skip


def _line(position: int, currency: str, item: PricedItem) -> Line:
    if item.unit_price.currency != currency:
        raise CurrencyMismatch(
            f"line {position} is priced in {item.unit_price.currency}, the invoice in {currency}",
            line=position,
            currency=item.unit_price.currency,
            invoice_currency=currency,
        )
    unit = item.unit_price.minor
    amount = _fits(item.quantity * unit, f"the amount of line {position}")
    return Line(item.description, item.quantity, unit, amount)


def _fits(minor: int, what: str) -> int:
    if minor > MAX_MINOR_UNITS:
        raise InvalidInput(
            f"{what} exceeds the largest amount billing can hold ({MAX_MINOR_UNITS} minor units)",
            limit_minor=MAX_MINOR_UNITS,
        )
    return minor


def invoice_number(year: int, value: int) -> str:
    """`INV-2026-000001`: six digits at least; the 1,000,000th of a year gets seven."""
    if value < 1:
        raise ValueError(f"invoice numbers start at 1, not {value}")
    return f"INV-{year:04d}-{value:06d}"


def number_value(number: str) -> tuple[int, int]:
    """`INV-2026-000042` -> (2026, 42)."""
    prefix, year, value = number.split("-")
    if prefix != "INV":
        raise ValueError(f"{number!r} is not an invoice number")
    return int(year), int(value)
