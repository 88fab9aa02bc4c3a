"""Re-anchoring a migrated subscription's periods (`billing.plan.migrate` to another
interval): the next period starts where the paid one ends, whatever the month ends and
leap years, and follows the new interval from there; the paid periods stay as they were."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.domain.calendar import period_boundary
from billing_worker.domain.plan_versions import Anchor, reanchored
from billing_worker.handlers.periods import period_bounds

anchors = st.datetimes(
    min_value=datetime(1996, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2104, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
# Month ends and leap days are where calendar arithmetic goes wrong: draw them often.
month_ends = st.builds(
    lambda year, month, hour: datetime(year, month, 28, hour, tzinfo=UTC).replace(
        day={2: 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28}.get(
            month, 30 if month in (4, 6, 9, 11) else 31
        )
    ),
    st.integers(1996, 2104), st.integers(1, 12), st.integers(0, 23),
)  # fmt: skip
intervals = st.sampled_from(["day", "week", "month", "year"])


def plan(interval: str, count: int) -> PlanRow:
    return PlanRow(id=uuid.uuid4(), code="pro", name="Pro", price_minor=1000, currency="USD",
                   interval=interval, interval_count=count, trial_days=0,
                   stripe_price_id=None, active=True)  # fmt: skip


def subscription(anchor: datetime, on: PlanRow, paid: int) -> SubscriptionRow:
    return SubscriptionRow(
        id=uuid.uuid4(), user_id="u", plan_id=on.id, status="active", payment_source="balance",
        payment_method_id=None, provider_subscription_id=None, current_period_start=None,
        current_period_end=None, billing_anchor=anchor, trial_end=None,
        cancel_at_period_end=False, canceled_at=None, cancel_reason=None, paid_periods=paid,
        dunning_attempts=0, next_attempt_at=None, plan=on,
    )  # fmt: skip


@given(
    anchor=st.one_of(anchors, month_ends),
    old=st.tuples(intervals, st.integers(1, 12)),
    new=st.tuples(intervals, st.integers(1, 12)),
    paid=st.integers(1, 40),
    later=st.integers(0, 30),
)
def test_moved_periods_continue_at_the_boundary_and_follow_the_new_interval(
    anchor: datetime, old: tuple[str, int], new: tuple[str, int], paid: int, later: int
) -> None:
    before = subscription(anchor, plan(*old), paid)
    paid_bounds = [period_bounds(before, i) for i in range(paid)]
    boundary = paid_bounds[-1][1]  # the end of the paid period: current_period_end
    target = plan(*new)
    moved_anchor = reanchored(Anchor(anchor, 0), paid, boundary, old == new)
    after = dataclasses.replace(
        before, plan=target, plan_id=target.id, billing_anchor=moved_anchor.at,
        anchor_offset=moved_anchor.offset,
    )  # fmt: skip
    start, end = period_bounds(after, paid)
    assert start == boundary  # no gap, no overlap at the move
    assert end > start
    index = paid + later
    start, end = period_bounds(after, index)
    assert period_bounds(after, index + 1)[0] == end  # contiguous
    if old != new:  # counted from the boundary in the new interval
        assert (start, end) == (
            period_boundary(boundary, new[0], new[1], later),
            period_boundary(boundary, new[0], new[1], later + 1),
        )
    else:  # the same interval: the same days as before the move
        assert (start, end) == period_bounds(before, index)
    # the periods paid before the move are where they were
    assert [period_bounds(before, i) for i in range(paid)] == paid_bounds


def test_monthly_to_yearly_after_six_periods_is_billed_from_the_seventh_month() -> None:
    before = subscription(datetime(2026, 1, 15, tzinfo=UTC), plan("month", 1), 6)
    yearly = plan("year", 1)
    moved = reanchored(Anchor(datetime(2026, 1, 15, tzinfo=UTC), 0), 6,
                       datetime(2026, 7, 15, tzinfo=UTC), same_period=False)  # fmt: skip
    after = dataclasses.replace(before, plan=yearly, plan_id=yearly.id, billing_anchor=moved.at,
                                anchor_offset=moved.offset)  # fmt: skip
    assert period_bounds(after, 6) == (
        datetime(2026, 7, 15, tzinfo=UTC),
        datetime(2027, 7, 15, tzinfo=UTC),
    )  # fmt: skip  (not 2032-01-15 → 2033-01-15, as without the offset)
