"""Invoices without I/O: the state machine, pricing and numbering.

draft -> open -> paid | void | uncollectible, and uncollectible -> paid (a written-off
invoice can still be paid, as at Stripe). Any other move is refused with `InvalidState`
and changes nothing. Amounts are integer minor units; a line's amount is
quantity x unit price, exactly, and every amount must fit a PostgreSQL BIGINT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.money import MAX_MINOR_UNITS, Money
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput
from billing_worker.domain.states import StateMachine

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
    description: str
    quantity: int
    unit_price_minor: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Priced:
    """The lines of a new invoice with its sums; no taxes or discounts, so total = subtotal."""

    currency: str
    lines: tuple[Line, ...]
    subtotal_minor: int
    total_minor: int


def price(currency: str, items: Iterable[PricedItem]) -> Priced:
    """Lines and totals in minor units; refuses another currency and BIGINT overflow."""
    lines = tuple(_line(position, currency, item) for position, item in enumerate(items))
    subtotal = _fits(sum(line.amount_minor for line in lines), "the invoice total")
    return Priced(currency, lines, subtotal_minor=subtotal, total_minor=subtotal)


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
