"""Coupons and discounts without I/O: a coupon's terms and each line's share, exactly.

A discount applies before tax. Per line, in integer minor units:

- `percent_off` p (0 < p <= 100, at most 4 decimal places, held in ten-thousandths):
  the line's discount is round_half_even(amount x p / 100), each line on its own;
- `amount_off` D (in the invoice's currency): capped at the sum of the lines' amounts,
  spread over the lines in proportion to their amounts by the largest-remainder rule:
  each line gets floor(D x amount / sum), and the minor units left go one each to the
  lines with the largest remainders (the earlier line on a tie). The shares add up to
  the capped D exactly and no line's share exceeds its amount.

Then the line's tax is computed on the discounted amount (amount - discount): on the net
for an exclusive rate, on the discounted gross for an inclusive one (`domain/taxes.py`).
An invoice keeps subtotal = the lines' nets before discount (amount less the tax it
contains), discount = the sum of the shares, tax = the sum of the taxes on the
discounted amounts, and total = subtotal - discount + tax, which is never negative.

Duration: `once` discounts the first charged period of a subscription, `repeating` N its
first N charged periods, `forever` every one; a trial period charges nothing and does
not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from billing_worker.domain.taxes import HUNDRED, SCALE, round_half_even


class Duration(StrEnum):
    ONCE = "once"
    REPEATING = "repeating"
    FOREVER = "forever"


@dataclass(frozen=True, slots=True)
class Coupon:
    """A coupon: its terms (everything but `name` and `active`) never change."""

    code: str
    name: str
    percent_off: Decimal | None  # exactly one of percent_off / amount_off_minor
    amount_off_minor: int | None
    currency: str | None  # set iff amount_off_minor is
    duration: Duration
    duration_in_periods: int | None  # set iff duration is repeating
    active: bool = True
    stripe_coupon_id: str | None = None

    def terms(self) -> tuple[object, ...]:
        """What an upsert of an existing code may not change."""
        return (
            None if self.percent_off is None else scaled_off(self.percent_off),
            self.amount_off_minor, self.currency, self.duration, self.duration_in_periods,
            self.stripe_coupon_id,
        )  # fmt: skip

    def applies_to(self, charged_periods_used: int) -> bool:
        """Whether the next charged period (after `charged_periods_used` discounted ones) is
        discounted."""
        if self.duration is Duration.FOREVER:
            return True
        limit = 1 if self.duration is Duration.ONCE else int(self.duration_in_periods or 0)
        return charged_periods_used < limit


def scaled_off(percent: Decimal) -> int:
    """The percent off in ten-thousandths; refuses p <= 0, p > 100 or 5+ decimal places."""
    value = percent * SCALE
    if value != value.to_integral_value() or not 0 < value <= HUNDRED:
        raise ValueError(f"a percent off is 0 < p <= 100 with 4 decimal places, not {percent}")
    return int(value)


def percent_shares(amounts: Sequence[int], percent: Decimal) -> list[int]:
    """Each line's discount at `percent` off: round half to even, line by line."""
    p = scaled_off(percent)
    return [round_half_even(amount * p, HUNDRED) for amount in amounts]


def amount_shares(amounts: Sequence[int], amount_off: int) -> list[int]:
    """`amount_off` (capped at the sum) spread over the lines by the largest remainder."""
    if amount_off < 0 or any(amount < 0 for amount in amounts):
        raise ValueError("amounts and the amount off are non-negative")
    total = sum(amounts)
    off = min(amount_off, total)
    if off == 0:
        return [0] * len(amounts)
    quotients = [divmod(off * amount, total) for amount in amounts]
    shares = [q for q, _ in quotients]
    left = off - sum(shares)
    order = sorted(range(len(amounts)), key=lambda i: (-quotients[i][1], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def shares(coupon: Coupon, amounts: Sequence[int]) -> list[int]:
    """Each line's discount under `coupon` (amount_off in the lines' currency)."""
    if coupon.percent_off is not None:
        return percent_shares(amounts, coupon.percent_off)
    return amount_shares(amounts, int(coupon.amount_off_minor or 0))


@dataclass(frozen=True, slots=True)
class Redemption:
    """A subscription's coupon and the charged periods it has discounted so far."""

    coupon: Coupon
    periods_used: int = 0

    @property
    def applies(self) -> bool:
        """Whether the subscription's next charged period is discounted."""
        return self.coupon.applies_to(self.periods_used)
