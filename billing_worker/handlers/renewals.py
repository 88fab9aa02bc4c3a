"""The renewal step: take one due subscription and renew, dun or end it."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from billing_contracts.subscriptions import PaymentSource
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.handlers import pauses, plan_changes, yookassa_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import charge_failed, charge_from_balance, end_subscription
from billing_worker.ports import UnitOfWork


class RenewalFailed(Exception):
    """Renewing one subscription failed unexpectedly; the round goes on without it."""

    def __init__(self, subscription_id: UUID, cause: Exception) -> None:
        super().__init__(f"subscription {subscription_id}: {type(cause).__name__}: {cause}")
        self.subscription_id = subscription_id


async def renew_next(skip: Sequence[UUID], uow: UnitOfWork, deps: Deps) -> str | Intent | None:
    """Renew one due subscription (locked, skipped by other schedulers); None if none.

    A provider charge is only begun here (an `Intent`, committed with its `created`
    charge): the scheduler calls the provider after the commit, holding no connection."""
    sub = await uow.subscriptions.claim_due(uow.clock(), skip)
    if sub is None:
        return None
    try:
        return await _renew(sub, uow, deps)
    except Exception as error:
        raise RenewalFailed(sub.id, error) from error


async def _renew(sub: SubscriptionRow, uow: UnitOfWork, deps: Deps) -> str | Intent:
    if sub.cancel_at_period_end:
        await end_subscription(sub, uow, reason=sub.cancel_reason or "canceled_at_period_end")
        return "ended"
    if Sub(sub.status) is Sub.PAUSED:  # due only when its `paused_until` came: charge now
        sub = await pauses.restart(sub, uow, reason="pause_ended")
    elif sub.pause_at_period_end:  # the paid period is over: paused from now on
        await pauses.take_effect(sub, uow)
        return "paused"
    if sub.scheduled_plan_id is not None:  # change-plan `period_end`: the next period is new
        sub = await plan_changes.apply_scheduled(sub, uow)
    if sub.payment_source == PaymentSource.YOOKASSA:
        return await yookassa_subscriptions.renew(sub, uow, deps) or "failed"
    if await charge_from_balance(sub, uow, deps):
        return "renewed"
    await charge_failed(
        sub, uow, deps, code="insufficient_funds",
        message=f"the {sub.plan.currency} balance does not cover the period",
    )  # fmt: skip
    return "failed"
