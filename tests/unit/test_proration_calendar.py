"""Properties of the proration arithmetic (`domain/proration.py`) over real calendar
periods: month ends, leap years, 28/29/30/31-day months, JPY (0), USD (2), KWD (3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from billing_contracts.currencies import CURRENCY_EXPONENTS
from billing_contracts.money import Money
from billing_worker.domain.calendar import period_boundary
from billing_worker.domain.proration import prorated, remaining_share, seconds

anchors = st.datetimes(  # naive bounds are what hypothesis takes; the values are UTC
    min_value=datetime(2023, 1, 1),  # noqa: DTZ001
    max_value=datetime(2033, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
intervals = st.sampled_from([("day", 1), ("week", 1), ("month", 1), ("month", 3), ("year", 1)])
currencies = st.sampled_from(["JPY", "USD", "KWD"])
quantities = st.integers(min_value=1, max_value=10_000)


@st.composite
def periods(draw: st.DrawFn) -> tuple[datetime, datetime, datetime]:
    """A period `[start, end)` of a real calendar and an instant inside it."""
    anchor, (interval, count) = draw(anchors), draw(intervals)
    index = draw(st.integers(min_value=0, max_value=30))
    start = period_boundary(anchor, interval, count, index)
    end = period_boundary(anchor, interval, count, index + 1)
    span = int(seconds(end - start))
    offset = draw(st.integers(min_value=0, max_value=span))
    now = start + timedelta(
        seconds=offset, microseconds=draw(st.integers(min_value=0, max_value=999_999))
    )
    return start, end, min(now, end)


@st.composite
def differences(draw: st.DrawFn) -> tuple[int, str]:
    """new price x new seats - old price x old seats, in a currency's minor units."""
    currency = draw(currencies)
    top = 10 ** CURRENCY_EXPONENTS[currency] * 10_000
    old = draw(st.integers(min_value=0, max_value=top)) * draw(quantities)
    new = draw(st.integers(min_value=0, max_value=top)) * draw(quantities)
    return new - old, currency


@given(periods(), differences())
def test_an_upgrade_and_the_downgrade_of_the_same_pair_sum_to_nothing(
    period: tuple[datetime, datetime, datetime], difference: tuple[int, str]
) -> None:
    start, end, now = period
    amount, _ = difference
    assert abs(prorated(amount, start, end, now) + prorated(-amount, start, end, now)) <= 1
    assert prorated(amount, start, end, now) == -prorated(-amount, start, end, now)  # half-even


@given(periods(), differences())
def test_never_beyond_the_difference_and_within_half_a_unit_of_the_exact_share(
    period: tuple[datetime, datetime, datetime], difference: tuple[int, str]
) -> None:
    start, end, now = period
    amount, currency = difference
    charged = prorated(amount, start, end, now)
    assert abs(charged) <= abs(amount)
    assert (charged > 0 and amount > 0) or (charged < 0 and amount < 0) or charged == 0
    exact = amount * Fraction(seconds(end - now), seconds(end - start))
    assert abs(charged - exact) <= Fraction(1, 2)
    Money.from_minor(abs(charged), currency)  # a whole number of the currency's units


@given(periods(), differences())
def test_the_whole_difference_at_the_start_and_nothing_at_the_end(
    period: tuple[datetime, datetime, datetime], difference: tuple[int, str]
) -> None:
    start, end, _ = period
    amount, _ = difference
    assert prorated(amount, start, end, start) == amount
    assert prorated(amount, start, end, end) == 0
    assert prorated(amount, start, end, end + timedelta(days=3)) == 0  # late: still nothing
    assert prorated(amount, start, end, start - timedelta(days=3)) == amount


def test_exact_figures_of_short_and_long_months() -> None:
    """Half of each month's exact seconds; months of 28, 29 (leap), 30 and 31 days."""
    for (year, month), days in {(2027, 2): 28, (2028, 2): 29, (2027, 4): 30, (2027, 1): 31}.items():
        start = datetime(year, month, 1, tzinfo=UTC)
        end = period_boundary(start, "month", 1, 1)
        assert (end - start).days == days
        assert remaining_share(start, end, start + (end - start) / 2) == Fraction(1, 2)
        assert prorated(1, start, end, start + (end - start) / 2) == 0  # 0.5 -> even 0
        assert prorated(3, start, end, start + (end - start) / 2) == 2  # 1.5 -> even 2
    jan31 = datetime(2027, 1, 31, tzinfo=UTC)  # a month-end anchor: Feb 28 is its next end
    end = period_boundary(jan31, "month", 1, 1)
    assert end == datetime(2027, 2, 28, tzinfo=UTC)
    assert prorated(2800, jan31, end, jan31 + timedelta(days=7)) == 2100  # 21 of 28 days
    # 1500 x 21/31 = 1016.129..., USD cents; 1,500,000 fils x 21/31 = 1,016,129.03
    jan = datetime(2027, 1, 1, tzinfo=UTC)
    feb = datetime(2027, 2, 1, tzinfo=UTC)
    assert prorated(1500, jan, feb, jan + timedelta(days=10)) == 1016
    assert prorated(1_500_000, jan, feb, jan + timedelta(days=10)) == 1_016_129
    assert prorated(-15, jan, feb, jan + timedelta(days=10)) == -10  # JPY: -10.16 -> -10
