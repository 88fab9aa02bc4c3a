"""Plan versions: which edits make a new version, and where a moved subscription's
periods start.

A plan's *terms* are what a subscriber pays and how often (price, currency, interval,
interval_count, trial_days, and the tax rate its periods are taxed at: its code, percent
and inclusiveness, copied when the version is made). An upsert that changes them makes
the next version of the plan; subscribers stay on the version they were sold until
`billing.plan.migrate` moves them, from their next period on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

TERMS = (
    "price_minor", "currency", "interval", "interval_count", "trial_days",
    "tax_rate_code", "tax_percent", "tax_inclusive",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Terms:
    price_minor: int
    currency: str
    interval: str
    interval_count: int
    trial_days: int
    tax_rate_code: str | None = None
    tax_percent: Decimal | None = None
    tax_inclusive: bool | None = None


def terms_of(plan: object) -> Terms:
    return Terms(**{name: getattr(plan, name) for name in TERMS})


@dataclass(frozen=True, slots=True)
class Anchor:
    """Period `offset` of a subscription starts at `at`; the later ones follow its plan's
    interval from there (period i starts at boundary(at, i - offset))."""

    at: datetime
    offset: int


def reanchored(current: Anchor, next_index: int, next_start: datetime, same_period: bool) -> Anchor:
    """The anchor after a move to another version from period `next_index` on (which
    starts at `next_start`, the end of the paid period). The same interval keeps the
    anchor, so month-end days stay as they were (Jan 31 → Feb 28 → Mar 31); another
    interval starts counting at the boundary, so the paid periods stay as they were."""
    if same_period:
        return current
    return Anchor(next_start, next_index)
