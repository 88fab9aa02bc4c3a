"""The subscription state machine and the dunning schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from billing_contracts.subscriptions import SubscriptionStatus as S
from billing_worker.domain.states import StateMachine

MACHINE = StateMachine[S](
    "subscription",
    {
        S.INCOMPLETE: frozenset({S.ACTIVE, S.TRIALING, S.INCOMPLETE_EXPIRED}),
        S.TRIALING: frozenset({S.ACTIVE, S.PAST_DUE, S.PAUSED, S.CANCELED}),
        S.ACTIVE: frozenset({S.PAST_DUE, S.PAUSED, S.CANCELED}),
        S.PAST_DUE: frozenset({S.ACTIVE, S.PAUSED, S.CANCELED}),
        S.PAUSED: frozenset({S.ACTIVE, S.CANCELED}),
        S.INCOMPLETE_EXPIRED: frozenset(),
        S.CANCELED: frozenset(),
    },
)
ALLOWED: Mapping[S, frozenset[S]] = MACHINE.allowed
TERMINAL = MACHINE.terminal
LIVE = frozenset({S.INCOMPLETE, S.TRIALING, S.ACTIVE, S.PAST_DUE, S.PAUSED})


can_move = MACHINE.can_move


def check_move(source: S, target: S) -> None:
    """Raise `InvalidState` unless the machine allows `source -> target`."""
    MACHINE.check(source, target)


def ending_status(source: S) -> S:
    """Where 'cancel now' takes a subscription: incomplete ones expire, others cancel."""
    target = S.INCOMPLETE_EXPIRED if source is S.INCOMPLETE else S.CANCELED
    check_move(source, target)
    return target


def next_attempt(
    period_end: datetime, failures: int, schedule_days: Sequence[int]
) -> datetime | None:
    """When to retry the charge of the period that ended at `period_end` after `failures`
    failed attempts; None means give up (the subscription is canceled).

    The schedule counts days from the period end, so a late run does not push the later
    retries back: (1, 3, 5) retries 1, 3 and 5 days after the period end, then cancels.
    """
    if failures > len(schedule_days):
        return None
    return period_end + timedelta(days=schedule_days[failures - 1])
