"""Resume, pause, unpause and change-plan of a subscription Stripe runs, in two phases.

They share the intent kind of the Stripe cancel (`stripe_subscriptions.CANCEL`): its
`request.action` says which change it is (none: the cancel itself), so the schema's
kinds stay as they are. Phase one (the command) writes only the intent; `call` asks
Stripe (`cancel_at_period_end` false, `pause_collection` set or unset, the item onto
another price and quantity), and `finish` applies the subscription as Stripe answered,
as a webhook's re-read would (`stripe_copy`), with the events of what changed.

A change-plan (`change_plan`) switches our copy's plan version, code and quantity only
when Stripe's answer shows its item on the asked price and quantity; the proration is
what Stripe's own invoice of the change (`billing_reason` subscription_update, paid)
totals: more than 0 charged (to the card, by Stripe), less credited (to the customer's
Stripe balance).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from billing_contracts.envelope import Command
from billing_contracts.subscriptions import SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import PlanChange, SubscriptionRow
from billing_worker.db.uow import utc_now
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.ledger import derived_id
from billing_worker.domain.money import to_wire
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers import stripe_copy, stripe_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.subscription_views import subscription_out, subscription_updated
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import (
    SubscriptionChange,
)

log = logging.getLogger(__name__)
KIND = stripe_subscriptions.CANCEL
ACTIONS = ("resume", "pause", "unpause", "change_plan")


def begin(
    command: Command, sub: SubscriptionRow, deps: Deps, action: str, *,
    until: datetime | None = None, change: Mapping[str, Any] | None = None,
) -> Intent:  # fmt: skip
    """Phase one: nothing changes here before Stripe agrees. `change`: what a
    change_plan asks (price_ref, quantity, proration_behavior, plan_code, plan_version,
    when, proration)."""
    assert action in ACTIONS
    assert (change is not None) == (action == "change_plan")
    stripe_subscriptions.stripe(deps)
    user_id = sub.user_id
    return Intent(
        id=derived_id(f"subscription.{action}", user_id, command.idempotency_key),
        kind=KIND, provider=stripe_subscriptions.STRIPE, user_id=user_id,
        subscription_id=sub.id,
        request={"action": action, "provider_subscription_id": sub.provider_subscription_id,
                 "until": None if until is None else until.isoformat(), **(change or {})},
    )  # fmt: skip


def _change_of(intent: Intent) -> SubscriptionChange:
    request = intent.request
    if request["action"] == "change_plan":
        return SubscriptionChange(
            "change_plan", price_ref=str(request["price_ref"]),
            quantity=int(request["quantity"]),
            proration_behavior=request["proration_behavior"], idempotency_key=str(intent.id),
        )  # fmt: skip
    until = request.get("until")
    return SubscriptionChange(request["action"], datetime.fromisoformat(until) if until else None)


async def call(intent: Intent, deps: Deps) -> Any:
    action = intent.request.get("action")
    if action is None:  # the cancel
        return await stripe_subscriptions.call_cancel(intent, deps)
    remote = await stripe_subscriptions.stripe(deps).change_subscription(
        str(intent.request["provider_subscription_id"]), _change_of(intent)
    )
    # Stamped once answered: a webhook's read that began before may have been served
    # before Stripe applied the change, so it is older than this answer (`Fetched`).
    return stripe_subscriptions.Fetched(remote, utc_now())


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
    if action == "change_plan" and Sub(sub.status) in LIVE:
        await _switch_plan(intent, sub, outcome.remote, uow)
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    return subscription_out(found)


async def _switch_plan(intent: Intent, sub: SubscriptionRow, remote: Any, uow: UnitOfWork) -> None:
    """Our copy onto the version Stripe now bills, as Stripe's answer shows it; the
    paid period stays as it was (the first period the change governs is the next)."""
    request = intent.request
    price_ref, quantity = str(request["price_ref"]), int(request["quantity"])
    if (remote.price_ref, remote.quantity) != (price_ref, quantity):
        log.warning(
            "Stripe's answer to the change of %s shows %s x %s, not %s x %s: ours stays",
            sub.id, remote.price_ref, remote.quantity, price_ref, quantity,
        )  # fmt: skip
        return
    target = await uow.plans.version(str(request["plan_code"]), int(request["plan_version"]))
    if target is None:
        raise InvalidState("the plan version of the change is gone", subscription_id=str(sub.id))
    moved = _proration_of(request, remote)
    now = uow.clock()
    await uow.subscriptions.change_plan(
        PlanChange(
            sub=sub, to=target, quantity=quantity, anchor=sub.billing_anchor,
            anchor_offset=sub.anchor_offset, from_period_index=sub.paid_periods,
            effective_at=now, proration_minor=moved,
        )
    )  # fmt: skip
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    currency = sub.plan.currency
    uow.emit(
        subscription_updated(
            found, sub.plan.version, now, change="change_plan", from_plan_code=sub.plan.code,
            from_quantity=sub.quantity, when=str(request["when"]), scheduled=False,
            proration=str(request["proration"]) if request["when"] == "now" else None,
            charged=to_wire(moved, currency) if moved and moved > 0 else None,
            credited=to_wire(-moved, currency) if moved and moved < 0 else None,
        )
    )  # fmt: skip


def _proration_of(request: Mapping[str, Any], remote: Any) -> int | None:
    """What Stripe's invoice of the change totals (minor units; < 0: a credit); None
    when Stripe was asked to invoice nothing."""
    if request["proration_behavior"] != "always_invoice":
        return None
    invoice = remote.latest_invoice
    if invoice is None or invoice.billing_reason != "subscription_update":
        log.warning("Stripe's answer to a prorated change carries no invoice of it")
        return None
    if invoice.status != "paid":
        log.warning("Stripe's proration invoice %s is %s", invoice.ref, invoice.status)
    return int(invoice.total_minor)


async def undo(intent: Intent, uow: UnitOfWork) -> None:
    """Stripe refused: our copy stays as it is."""
