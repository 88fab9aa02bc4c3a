"""Billing-period arithmetic: exact, anchored to the first day, for every interval."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_worker.domain.calendar import add_months, period_boundary

anchors = st.datetimes(
    min_value=datetime(1990, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2200, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def test_jan_31_plus_one_month_is_the_last_day_of_february() -> None:
    anchor = datetime(2027, 1, 31, tzinfo=UTC)
    assert add_months(anchor, 1) == datetime(2027, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2028, 1, 31, tzinfo=UTC), 1) == datetime(2028, 2, 29, tzinfo=UTC)


def test_later_periods_return_to_the_original_day() -> None:
    anchor = datetime(2027, 1, 31, 8, 15, tzinfo=UTC)
    ends = [period_boundary(anchor, "month", 1, n).date().isoformat() for n in range(1, 5)]
    assert ends == ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"]


def test_a_leap_day_yearly_plan_renews_on_feb_28_and_back_on_feb_29() -> None:
    anchor = datetime(2028, 2, 29, tzinfo=UTC)
    assert period_boundary(anchor, "year", 1, 1).date().isoformat() == "2029-02-28"
    assert period_boundary(anchor, "year", 1, 4).date().isoformat() == "2032-02-29"


@given(anchor=anchors, months=st.integers(min_value=0, max_value=1200))
def test_adding_months_keeps_the_day_or_clamps_it_to_the_months_end(
    anchor: datetime, months: int
) -> None:
    moved = add_months(anchor, months)
    assert (moved.year * 12 + moved.month) - (anchor.year * 12 + anchor.month) == months
    assert moved.day == min(anchor.day, calendar.monthrange(moved.year, moved.month)[1])
    assert moved.time() == anchor.time()
    assert moved.tzinfo == anchor.tzinfo


@given(
    anchor=anchors,
    interval=st.sampled_from(["day", "week", "month", "year"]),
    count=st.integers(min_value=1, max_value=12),
    index=st.integers(min_value=0, max_value=60),
)
def test_periods_are_strictly_increasing_and_never_drift(
    anchor: datetime, interval: str, count: int, index: int
) -> None:
    start = period_boundary(anchor, interval, count, index)
    end = period_boundary(anchor, interval, count, index + 1)
    assert end > start
    if interval in ("month", "year"):  # computed from the anchor, not from the last end
        months = count * (index + 1) * (12 if interval == "year" else 1)
        assert end == add_months(anchor, months)
    else:
        days = {"day": 1, "week": 7}[interval] * count * (index + 1)
        assert end == anchor + timedelta(days=days)
