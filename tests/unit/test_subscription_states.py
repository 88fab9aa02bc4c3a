"""The subscription state machine and the dunning schedule."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from billing_contracts.subscriptions import SubscriptionStatus as S
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.subscriptions import check_move, ending_status, next_attempt

DESIGNED = {
    (S.INCOMPLETE, S.ACTIVE), (S.INCOMPLETE, S.TRIALING), (S.INCOMPLETE, S.INCOMPLETE_EXPIRED),
    (S.TRIALING, S.ACTIVE), (S.TRIALING, S.PAST_DUE), (S.TRIALING, S.CANCELED),
    (S.ACTIVE, S.PAST_DUE), (S.ACTIVE, S.CANCELED),
    (S.PAST_DUE, S.ACTIVE), (S.PAST_DUE, S.CANCELED),
    (S.TRIALING, S.PAUSED), (S.ACTIVE, S.PAUSED), (S.PAST_DUE, S.PAUSED),
    (S.PAUSED, S.ACTIVE), (S.PAUSED, S.CANCELED),
}  # fmt: skip


@pytest.mark.parametrize(("source", "target"), sorted(DESIGNED))
def test_a_designed_move_is_allowed(source: S, target: S) -> None:
    check_move(source, target)


@pytest.mark.parametrize(
    ("source", "target"), [p for p in itertools.product(S, S) if p not in DESIGNED]
)
def test_every_other_move_is_invalid_state(source: S, target: S) -> None:
    with pytest.raises(InvalidState):
        check_move(source, target)


def test_ending_an_incomplete_subscription_expires_it_and_others_cancel() -> None:
    assert ending_status(S.INCOMPLETE) is S.INCOMPLETE_EXPIRED
    assert ending_status(S.PAST_DUE) is S.CANCELED
    with pytest.raises(InvalidState):
        ending_status(S.CANCELED)


def test_retries_follow_the_schedule_from_the_period_end_then_give_up() -> None:
    end = datetime(2030, 5, 1, tzinfo=UTC)
    schedule = (1, 3, 5)
    retries = [next_attempt(end, failures, schedule) for failures in (1, 2, 3, 4)]
    assert retries == [
        end + timedelta(days=1),
        end + timedelta(days=3),
        end + timedelta(days=5),
        None,
    ]
