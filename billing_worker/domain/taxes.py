"""Tax rates without I/O: a line's tax, exactly, in integer minor units.

A percent has at most 4 decimal places, so it is held as an integer count of
ten-thousandths (`19.5` -> 195000) and every computation is integer division rounded
half to even (banker's rounding) to the currency's minor unit, once per line:

- exclusive: tax = round(amount x p / 100); the line's net is its amount, its total
  amount + tax;
- inclusive: the amount already contains the tax: tax = round(amount x p / (100 + p)),
  net = amount - tax, total = amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

SCALE = 10_000  # ten-thousandths of a percent: the percent's 4 decimal places
HUNDRED = 100 * SCALE


@dataclass(frozen=True, slots=True)
class TaxRate:
    code: str
    name: str
    percent: Decimal  # 0 <= percent < 100, at most 4 decimal places (NUMERIC(6, 4))
    inclusive: bool


def scaled(percent: Decimal) -> int:
    """The percent in ten-thousandths; refuses more than 4 decimal places or out of range."""
    value = percent * SCALE
    if value != value.to_integral_value() or not 0 <= value < HUNDRED:
        raise ValueError(f"a tax percent is 0 <= p < 100 with 4 decimal places, not {percent}")
    return int(value)


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator (both >= 0, denominator > 0) to the nearest integer, a tie
    to the even one."""
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def line_tax(amount_minor: int, percent: Decimal, inclusive: bool) -> int:
    """The tax of a line of `amount_minor` at `percent` (see the module's rule)."""
    p = scaled(percent)
    return round_half_even(amount_minor * p, HUNDRED + p if inclusive else HUNDRED)


def format_percent(percent: Decimal) -> str:
    """`19.0000` -> `19`, `7.5000` -> `7.5`: the shortest exact decimal string."""
    text = f"{percent:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
