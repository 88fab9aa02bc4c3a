"""Pausing the subscriptions the worker bills (balance, YooKassa), shared by the
commands and the renewal scheduler.

- A pause takes effect when the paid period ends (`pause_at_period_end`, then the
  scheduler's `take_effect`); a `past_due` subscription pauses at once (its unpaid
  period is not charged). While paused nothing is charged and nobody duns.
- `restart` ends a pause: a new period starts at that instant (the subscription is
  re-anchored there: `billing_anchor` = now, `anchor_offset` = the next period's index)
  and is due at once, so it is charged then (balance: by the unpause itself; YooKassa and
  an `until` reached: by the scheduler's next round).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from billing_contracts.events import SUBSCRIPTION_PAUSED, SUBSCRIPTION_RESUMED
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.subscriptions import check_move
from billing_worker.handlers.subscription_views import subscription_event
from billing_worker.ports import UnitOfWork


async def _move(sub: SubscriptionRow, uow: UnitOfWork, changes: dict[str, Any]) -> SubscriptionRow:
    await uow.subscriptions.update(sub.id, **changes)
    return dataclasses.replace(sub, **changes)


async def take_effect(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionRow:
    """Pause now: `paused`, nothing due until unpaused (or `paused_until`)."""
    check_move(Sub(sub.status), Sub.PAUSED)
    changes = {"status": Sub.PAUSED.value, "pause_at_period_end": False,
               "next_attempt_at": None}  # fmt: skip
    moved = await _move(sub, uow, changes)
    uow.emit(subscription_event(SUBSCRIPTION_PAUSED, moved))
    return moved


async def restart(sub: SubscriptionRow, uow: UnitOfWork, *, reason: str) -> SubscriptionRow:
    """End a pause: active again, re-anchored now, its next period due at once."""
    check_move(Sub(sub.status), Sub.ACTIVE)
    now = uow.clock()
    changes = {
        "status": Sub.ACTIVE.value, "billing_anchor": now, "anchor_offset": sub.paid_periods,
        "restarts": sub.restarts + 1, "current_period_start": now, "current_period_end": now,
        "pause_at_period_end": False, "paused_until": None, "dunning_attempts": 0,
        "next_attempt_at": None,
    }  # fmt: skip
    moved = await _move(sub, uow, changes)
    uow.emit(subscription_event(SUBSCRIPTION_RESUMED, moved, reason=reason))
    return moved


async def drop_scheduled(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionRow:
    """Forget a pause that has not taken effect yet: the subscription renews as before."""
    moved = await _move(sub, uow, {"pause_at_period_end": False, "paused_until": None})
    uow.emit(subscription_event(SUBSCRIPTION_RESUMED, moved, reason="pause_dropped"))
    return moved
