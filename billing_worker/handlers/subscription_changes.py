"""`billing.subscription.resume`, `.pause` and `.unpause`.

Balance and YooKassa subscriptions change here, in the command's transaction (see
`pauses` for the rules of a pause); a subscription Stripe runs is changed at Stripe
first (an `Intent`: `stripe_changes` asks Stripe after the commit).
"""

from __future__ import annotations

import dataclasses

from billing_contracts.events import SUBSCRIPTION_RESUMED
from billing_contracts.subscription_changes import (
    PauseSubscription,
    ResumeSubscription,
    UnpauseSubscription,
)
from billing_contracts.subscriptions import PaymentSource, SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.errors import InvalidInput, InvalidState, NotFound
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers import pauses, plan_changes, stripe_changes
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import charge_from_balance, not_covered
from billing_worker.handlers.subscription_views import subscription_event, subscription_out
from billing_worker.ports import UnitOfWork

Command = ResumeSubscription | PauseSubscription | UnpauseSubscription
_PAUSABLE = (Sub.ACTIVE, Sub.TRIALING, Sub.PAST_DUE)


async def _owned(command: Command, uow: UnitOfWork) -> SubscriptionRow:
    """The user's live subscription, locked; another's is `not_found` like a missing one."""
    sub = await uow.subscriptions.get(command.subscription_id, lock=True)
    if sub is None or sub.user_id != command.user_id:
        raise NotFound(f"no subscription {command.subscription_id}")
    if Sub(sub.status) not in LIVE:
        raise InvalidState(f"the subscription is already {sub.status}", status=sub.status)
    if await uow.intents.of_subscription(sub.id):  # its answer must find it as it left it
        raise InvalidState(
            "a provider call for this subscription is in flight; try again shortly",
            status=sub.status,
        )
    return sub


def _stripe_run(sub: SubscriptionRow) -> bool:
    return sub.payment_source == PaymentSource.STRIPE and sub.provider_subscription_id is not None


async def _reloaded(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionOut:
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    return subscription_out(found)


async def resume_subscription(
    command: ResumeSubscription, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | Intent:
    """Undo a period-end cancel while the period has not ended."""
    sub = await _owned(command, uow)
    if not sub.cancel_at_period_end:
        raise InvalidState("the subscription is not canceling at its period end",
                           status=sub.status)  # fmt: skip
    if sub.current_period_end is not None and sub.current_period_end <= uow.clock():
        raise InvalidState(
            "the subscription's period has ended: it is being canceled", status=sub.status
        )
    if _stripe_run(sub):
        return stripe_changes.begin(command, sub, deps, "resume")
    await uow.subscriptions.update(sub.id, cancel_at_period_end=False, cancel_reason=None)
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    uow.emit(subscription_event(SUBSCRIPTION_RESUMED, found, reason="cancel_undone"))
    return subscription_out(found)


async def pause_subscription(
    command: PauseSubscription, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | Intent:
    """Pause at the end of the paid period (past_due: now; Stripe: at Stripe, now)."""
    sub = await _owned(command, uow)
    status = Sub(sub.status)
    # Stripe keeps a trial `trialing` under pause_collection: pause it once it is paid for
    if status not in _PAUSABLE or (_stripe_run(sub) and status is Sub.TRIALING):
        raise InvalidState(f"a {sub.status} subscription cannot be paused", status=sub.status)
    if sub.pause_at_period_end or sub.cancel_at_period_end:
        what = "pausing" if sub.pause_at_period_end else "canceling"
        raise InvalidState(f"the subscription is {what} at its period end already",
                           status=sub.status)  # fmt: skip
    takes_effect = uow.clock()
    if not _stripe_run(sub) and status is not Sub.PAST_DUE and sub.current_period_end:
        takes_effect = max(takes_effect, sub.current_period_end)
    if command.until is not None and command.until <= takes_effect:
        raise InvalidInput(
            "until must be later than when the pause takes effect",
            takes_effect=takes_effect.isoformat(),
        )
    if _stripe_run(sub):
        return stripe_changes.begin(command, sub, deps, "pause", until=command.until)
    await uow.subscriptions.update(sub.id, paused_until=command.until)
    if status is Sub.PAST_DUE:  # no paid period to serve: dunning stops now
        await pauses.take_effect(dataclasses.replace(sub, paused_until=command.until), uow)
    else:
        await uow.subscriptions.update(sub.id, pause_at_period_end=True)
    return await _reloaded(sub, uow)


async def unpause_subscription(
    command: UnpauseSubscription, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | Intent:
    """Run a paused subscription again (a new period, charged now), or drop a pause
    that has not taken effect."""
    sub = await _owned(command, uow)
    if sub.pause_at_period_end and Sub(sub.status) is not Sub.PAUSED:
        await pauses.drop_scheduled(sub, uow)
        return await _reloaded(sub, uow)
    if Sub(sub.status) is not Sub.PAUSED:
        raise InvalidState("the subscription is not paused", status=sub.status)
    if _stripe_run(sub):
        return stripe_changes.begin(command, sub, deps, "unpause")
    restarted = await pauses.restart(sub, uow, reason="unpaused")
    if restarted.scheduled_plan_id is not None:  # change-plan `period_end`: the new period
        restarted = await plan_changes.apply_scheduled(restarted, uow)
    if sub.payment_source == PaymentSource.BALANCE and not await charge_from_balance(
        restarted, uow, deps
    ):  # refused: the whole command rolls back, the subscription stays paused
        raise not_covered(sub, "a period")
    return await _reloaded(sub, uow)  # YooKassa: due now, the scheduler charges the card
