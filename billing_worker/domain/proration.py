"""Proration: what the rest of a paid period costs at other terms.

A change of plan (or of seats) in the middle of a paid period `[start, end)` at `now`
charges or credits the difference of the two period prices for the part left:

    amount = round_half_even((new_minor - old_minor) * remaining / length)

where `new_minor` / `old_minor` are a whole period's net price (price x quantity, in
integer minor units of the one currency), `remaining = end - now` and `length = end -
start`, both exact to the microsecond (a `Fraction` of seconds, never a float). Positive:
charged (an upgrade); negative: credited (a downgrade). Half-even rounding is symmetric,
so the upgrade and the downgrade of the same pair at the same instant sum to exactly 0;
at the period start the whole difference moves, at its end nothing, and never more than
the difference.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction


def seconds(span: timedelta) -> Fraction:
    """A duration exactly, in seconds."""
    return Fraction(span.days * 86_400 + span.seconds) + Fraction(span.microseconds, 1_000_000)


def remaining_share(start: datetime, end: datetime, now: datetime) -> Fraction:
    """The part of `[start, end)` left at `now`, exactly: 1 at or before the start, 0 at or
    after the end."""
    if end <= start:
        raise ValueError("a period ends after it starts")
    left = min(max(end - now, timedelta(0)), end - start)
    return seconds(left) / seconds(end - start)


def prorated(difference_minor: int, start: datetime, end: datetime, now: datetime) -> int:
    """`difference_minor` (new period price - old) for the rest of the period, rounded
    half-even to an integer minor unit."""
    return round(difference_minor * remaining_share(start, end, now))
