"""Billing periods: exact calendar arithmetic anchored to the subscription's first day.

A monthly subscription started on Jan 31 renews on Feb 28 (29 in a leap year), then
Mar 31, Apr 30, ...: each period end is computed from the anchor, never from the
previous end, so a short month does not drag every later date earlier.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

INTERVALS = ("day", "week", "month", "year")


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole months, the day clamped to the target month's length."""
    year, month0 = divmod(anchor.month - 1 + months, 12)
    year += anchor.year
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def period_boundary(anchor: datetime, interval: str, count: int, index: int) -> datetime:
    """The start of period `index` (0 = the anchor) for a plan billed every `count` intervals."""
    steps = count * index
    if interval == "day":
        return anchor + timedelta(days=steps)
    if interval == "week":
        return anchor + timedelta(weeks=steps)
    if interval == "month":
        return add_months(anchor, steps)
    if interval == "year":
        return add_months(anchor, 12 * steps)
    raise ValueError(f"unknown interval {interval!r}")


def trial_end(start: datetime, trial_days: int) -> datetime:
    return start + timedelta(days=trial_days)
