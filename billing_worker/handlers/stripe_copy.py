"""Our copy of a subscription Stripe runs, as a read of Stripe's tells it.

Applied by every subscription webhook (`stripe_subscriptions.sync`) and by the answer
to a change the worker asked for (`stripe_changes`): the status (Stripe's
pause_collection makes ours `paused`), the period, the period-end cancel and the pause,
and one event per change seen (created, renewed, past_due, paused, resumed, canceled).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from billing_contracts.events import (
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_PAUSED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_RESUMED,
)
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.subscriptions import LIVE, can_move
from billing_worker.handlers.subscription_views import subscription_event
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import ProviderSubscription, SubscriptionGateway

log = logging.getLogger(__name__)


def our_status(gateway: SubscriptionGateway, remote: ProviderSubscription) -> Sub | None:
    """Our status for Stripe's: an active (or past due) one whose collection is paused
    is `paused` (Stripe keeps `active` under pause_collection)."""
    status = gateway.subscription_status(remote.status)
    if remote.paused and status in (Sub.ACTIVE, Sub.PAST_DUE):
        return Sub.PAUSED
    return status


async def apply_remote(
    sub: SubscriptionRow, remote: ProviderSubscription, read_at: datetime,
    gateway: SubscriptionGateway, uow: UnitOfWork, *, amount_minor: int | None = None,
) -> None:  # fmt: skip
    """Our copy (locked) as Stripe's read (stamped `read_at`, see `Fetched`) tells it,
    and the events of what changed."""
    old, told = Sub(sub.status), our_status(gateway, remote)
    new = _status_after(sub, remote, gateway)
    if told is not None and told is not new:
        log.warning("Stripe says %s for a %s subscription %s: keeping ours", told, old, sub.id)
    changes: dict[str, Any] = {**_copy_of(sub, remote, gateway), "provider_synced_at": read_at}
    if new in (Sub.CANCELED, Sub.INCOMPLETE_EXPIRED) and old is not new:
        changes["canceled_at"] = uow.clock()
    await uow.subscriptions.update(sub.id, **changes)
    moved = dataclasses.replace(sub, **changes)
    for kind, reason in _announcements(sub, old, new, remote):
        uow.emit(subscription_event(kind, moved, reason=reason, amount_minor=amount_minor))


def tells_otherwise(
    sub: SubscriptionRow, remote: ProviderSubscription, gateway: SubscriptionGateway
) -> bool:
    """Would applying this read change our copy?"""
    copy = _copy_of(sub, remote, gateway)
    return any(getattr(sub, name) != value for name, value in copy.items())


def _status_after(
    sub: SubscriptionRow, remote: ProviderSubscription, gateway: SubscriptionGateway
) -> Sub:
    old = Sub(sub.status)
    new = our_status(gateway, remote) or old
    return new if new is old or can_move(old, new) else old


def _copy_of(
    sub: SubscriptionRow, remote: ProviderSubscription, gateway: SubscriptionGateway
) -> dict[str, Any]:
    """The fields of our copy a read of Stripe sets, as it sets them."""
    return {
        "status": _status_after(sub, remote, gateway).value,
        "current_period_start": remote.period_start,
        "current_period_end": remote.period_end,
        "cancel_at_period_end": remote.cancel_at_period_end,
        "paused_until": remote.resumes_at if remote.paused else None,
    }


def _announcements(
    sub: SubscriptionRow, old: Sub, new: Sub, remote: ProviderSubscription
) -> list[tuple[str, str | None]]:
    if old is new:
        period_end = remote.period_end
        advanced = new is Sub.ACTIVE and period_end and sub.current_period_end != period_end
        undone = sub.cancel_at_period_end and not remote.cancel_at_period_end
        return ([(SUBSCRIPTION_RENEWED, None)] if advanced else []) + (
            [(SUBSCRIPTION_RESUMED, "cancel_undone")] if undone and new in LIVE else []
        )
    if old is Sub.INCOMPLETE and new in (Sub.ACTIVE, Sub.TRIALING):
        return [(SUBSCRIPTION_CREATED, None)]
    if old is Sub.PAUSED and new in (Sub.ACTIVE, Sub.TRIALING):
        return [(SUBSCRIPTION_RESUMED, "unpaused")]
    kind = {
        Sub.PAST_DUE: SUBSCRIPTION_PAST_DUE,
        Sub.PAUSED: SUBSCRIPTION_PAUSED,
        Sub.CANCELED: SUBSCRIPTION_CANCELED,
        Sub.ACTIVE: SUBSCRIPTION_RENEWED,  # past_due or trialing -> active: a paid period
    }.get(new)
    return [] if kind is None else [(kind, None)]
