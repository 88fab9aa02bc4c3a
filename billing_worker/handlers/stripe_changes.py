"""Resume, pause and unpause of a subscription Stripe runs, in two phases.

They share the intent kind of the Stripe cancel (`stripe_subscriptions.CANCEL`): its
`request.action` says which change it is (none: the cancel itself), so the schema's
kinds stay as they are. Phase one (the command) writes only the intent; `call` asks
Stripe (`cancel_at_period_end` false, `pause_collection` set or unset), and `finish`
applies the subscription as Stripe answered, as a webhook's re-read would
(`stripe_copy`), with the events of what changed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from billing_contracts.envelope import Command
from billing_contracts.subscriptions import SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.uow import utc_now
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.ledger import derived_id
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers import stripe_copy, stripe_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.subscription_views import subscription_out
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import (
    SubscriptionChange,
)

log = logging.getLogger(__name__)
KIND = stripe_subscriptions.CANCEL
ACTIONS = ("resume", "pause", "unpause")


def begin(
    command: Command, sub: SubscriptionRow, deps: Deps, action: str, *,
    until: datetime | None = None,
) -> Intent:  # fmt: skip
    """Phase one: nothing changes here before Stripe agrees."""
    assert action in ACTIONS
    stripe_subscriptions.stripe(deps)
    user_id = sub.user_id
    return Intent(
        id=derived_id(f"subscription.{action}", user_id, command.idempotency_key),
        kind=KIND, provider=stripe_subscriptions.STRIPE, user_id=user_id,
        subscription_id=sub.id,
        request={"action": action, "provider_subscription_id": sub.provider_subscription_id,
                 "until": None if until is None else until.isoformat()},
    )  # fmt: skip


async def call(intent: Intent, deps: Deps) -> Any:
    action = intent.request.get("action")
    if action is None:  # the cancel
        return await stripe_subscriptions.call_cancel(intent, deps)
    until = intent.request.get("until")
    at = utc_now()  # before the call: a webhook's read that began earlier is older
    remote = await stripe_subscriptions.stripe(deps).change_subscription(
        str(intent.request["provider_subscription_id"]),
        SubscriptionChange(action, datetime.fromisoformat(until) if until else None),
    )
    return stripe_subscriptions.Fetched(remote, at)


async def finish(intent: Intent, outcome: Any, uow: UnitOfWork, deps: Deps) -> SubscriptionOut:
    action = intent.request.get("action")
    if action is None:
        return await stripe_subscriptions.finish_cancel(intent, outcome, uow, deps)
    assert isinstance(outcome, stripe_subscriptions.Fetched)
    assert intent.subscription_id is not None
    sub = await uow.subscriptions.get(intent.subscription_id, lock=True)
    if sub is None:
        raise InvalidState("the subscription is gone", subscription_id=str(intent.subscription_id))
    if Sub(sub.status) in LIVE and not (
        sub.provider_synced_at is not None and outcome.at < sub.provider_synced_at
    ):  # a later read (a webhook's) already applied wins
        gateway = stripe_subscriptions.stripe(deps)
        await stripe_copy.apply_remote(sub, outcome.remote, outcome.at, gateway, uow)
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    return subscription_out(found)


async def undo(intent: Intent, uow: UnitOfWork) -> None:
    """Stripe refused: our copy stays as it is."""
