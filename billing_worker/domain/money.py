"""Money inside the worker: integer minor units plus an ISO 4217 code.

Conversion to and from the wire's decimal strings lives in `billing_contracts.money`;
this module adds what the domain needs on top of it.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from billing_contracts.money import Money, exponent_of, format_minor, parse_minor

__all__ = ["Money", "format_minor", "parse_minor", "threshold_minor", "to_wire"]


def to_wire(minor: int, currency: str) -> Money:
    return Money.from_minor(minor, currency)


def threshold_minor(threshold: Decimal, currency: str) -> int:
    """A threshold in major units (e.g. 10.00) as minor units of `currency`, rounded down."""
    scaled = threshold.scaleb(exponent_of(currency))
    return int(scaled.to_integral_value(rounding=ROUND_FLOOR))
