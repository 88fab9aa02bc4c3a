"""Stripe-run subscriptions: Stripe charges the card; its webhooks drive our copy.

On every subscription webhook the worker re-reads the subscription from Stripe and
applies what it finds, so events arriving twice or out of order cannot move the
subscription backwards.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_contracts.events import (
    SUBSCRIPTION_CREATED,
)
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_contracts.wallet import PaymentAction
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.uow import utc_now
from billing_worker.domain.discounts import Coupon
from billing_worker.domain.errors import InvalidInput, InvalidState, ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers import default_method, stripe_copy, stripe_invoices, views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import ensure_customer
from billing_worker.handlers.periods import end_subscription, insert
from billing_worker.handlers.subscription_views import subscription_event, subscription_out
from billing_worker.ports import UnitOfWork
from billing_worker.providers import stripe as stripe_provider
from billing_worker.providers.base import (
    ProviderSubscription,
    SubscriptionProvider,
    UnknownProvider,
)

log = logging.getLogger(__name__)
_IDS = uuid.UUID("2b6f7c1e-8e0a-4d7b-9a53-31e4f0a9c6d2")

STRIPE = stripe_provider.NAME


def stripe(deps: Deps) -> SubscriptionProvider:
    try:
        return stripe_provider.billing(deps.gateways)
    except UnknownProvider:
        raise ProviderError("Stripe is not configured on this worker") from None


CREATE = "stripe_subscription"  # intent kinds: creating a subscription at Stripe...
CANCEL = "stripe_cancel"  # ...and canceling one there


async def create(
    command: CreateSubscription,
    sub: SubscriptionRow,
    uow: UnitOfWork,
    deps: Deps,
    coupon: Coupon | None = None,
) -> Intent:
    """Phase one: our subscription, incomplete, with no Stripe id yet. Stripe is asked
    after this commits (`call_create`), with the subscription id as idempotency key."""
    plan = sub.plan
    if not plan.stripe_price_id:
        raise ProviderError(f"plan {plan.code} has no stripe_price_id", plan_code=plan.code)
    if coupon is not None and not coupon.stripe_coupon_id:
        raise InvalidInput(
            f"coupon {coupon.code} has no stripe_coupon_id: it cannot discount a Stripe "
            "subscription",
            coupon=coupon.code,
        )
    stripe(deps)
    sub = dataclasses.replace(sub, billing_anchor=None)
    await insert(sub, uow)
    return Intent(
        id=sub.id, kind=CREATE, provider=STRIPE, user_id=sub.user_id, subscription_id=sub.id,
        request={"price_ref": plan.stripe_price_id, "trial_days": plan.trial_days,
                 "quantity": sub.quantity,
                 "coupon_ref": None if coupon is None else coupon.stripe_coupon_id,
                 "payment_method_id": (await default_method.method_for(
                     uow, sub.user_id, STRIPE, command.payment_method_id))[0]},
        customer_ref=await uow.users.customer_ref(sub.user_id, STRIPE),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Created:
    remote: ProviderSubscription
    new_customer: str | None


async def call_create(intent: Intent, deps: Deps) -> Created:
    gateway = stripe(deps)
    customer, new_customer = await ensure_customer(gateway, intent)
    assert customer is not None
    request = intent.request
    remote = await gateway.create_subscription(
        customer_ref=customer,
        price_ref=str(request["price_ref"]),
        payment_method_id=request.get("payment_method_id"),
        trial_days=int(request.get("trial_days") or 0),
        idempotency_key=str(intent.id),
        metadata={"subscription_id": str(intent.id), "user_id": intent.user_id},
        quantity=int(request.get("quantity") or 1),
        coupon_ref=request.get("coupon_ref") or None,
    )
    return Created(remote, new_customer)


async def finish_create(
    intent: Intent, created: Created, uow: UnitOfWork, deps: Deps
) -> SubscriptionCreated:
    if created.new_customer:
        await uow.users.remember_customer(intent.user_id, STRIPE, created.new_customer)
    sub = await _locked(intent, uow)
    remote = created.remote
    status = stripe_copy.our_status(stripe(deps), remote) or Sub.INCOMPLETE
    changes: dict[str, Any] = {
        "status": status.value, "provider_subscription_id": remote.ref,
        "current_period_start": remote.period_start, "current_period_end": remote.period_end,
        "trial_end": remote.period_end if status is Sub.TRIALING else None,
        "cancel_at_period_end": remote.cancel_at_period_end,
    }  # fmt: skip
    await uow.subscriptions.update(sub.id, **changes)
    sub = dataclasses.replace(sub, **changes)
    if status in (Sub.ACTIVE, Sub.TRIALING):
        uow.emit(subscription_event(SUBSCRIPTION_CREATED, sub))
    action = None
    if remote.client_secret:
        action = PaymentAction(type="client_secret", client_secret=remote.client_secret)
    return SubscriptionCreated(subscription=subscription_out(sub), payment_action=action)


async def undo_create(intent: Intent, uow: UnitOfWork) -> None:
    """Stripe refused (nothing was created there): our subscription goes too."""
    assert intent.subscription_id is not None
    await uow.subscriptions.discard_incomplete(intent.subscription_id)


def begin_cancel(command: CancelSubscription, sub: SubscriptionRow, deps: Deps) -> Intent:
    """Phase one of a cancel of a subscription Stripe runs: Stripe is asked after the
    commit (`call_cancel`), and `finish_cancel` ends our copy."""
    stripe(deps)
    return Intent(
        id=derived_id("subscription.cancel", command.user_id, command.idempotency_key),
        kind=CANCEL, provider=STRIPE, user_id=sub.user_id, subscription_id=sub.id,
        request={"at_period_end": command.at_period_end, "reason": command.reason,
                 "provider_subscription_id": sub.provider_subscription_id},
    )  # fmt: skip


async def call_cancel(intent: Intent, deps: Deps) -> Fetched | None:
    """Cancel at Stripe (again, on a redelivery: canceling twice changes nothing)."""
    ref = intent.request.get("provider_subscription_id")
    if not ref:
        return None
    remote = await stripe(deps).cancel_subscription(
        str(ref), at_period_end=bool(intent.request.get("at_period_end"))
    )
    return Fetched(remote, utc_now())  # stamped once answered, as a change's answer is


async def finish_cancel(
    intent: Intent, answer: Fetched | None, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut:
    sub = await _locked(intent, uow)
    at_period_end, reason = bool(intent.request.get("at_period_end")), intent.request.get("reason")
    if Sub(sub.status) in LIVE:  # a webhook may have ended it already: nothing left to do
        if at_period_end and Sub(sub.status) is not Sub.INCOMPLETE:
            # Stripe's answer is a read too: a webhook's read older than it is not
            # applied over it (`sync`).
            synced = {} if answer is None else {"provider_synced_at": answer.at}
            await uow.subscriptions.update(
                sub.id, cancel_at_period_end=True, cancel_reason=reason, **synced
            )
        else:
            await end_subscription(sub, uow, reason=reason or "canceled_by_request")
    reloaded = await uow.subscriptions.get(sub.id)
    assert reloaded is not None
    return subscription_out(reloaded)


async def undo_cancel(intent: Intent, uow: UnitOfWork) -> None:
    """Stripe refused the cancel: our copy stays as it is."""


async def _locked(intent: Intent, uow: UnitOfWork) -> SubscriptionRow:
    assert intent.subscription_id is not None
    sub = await uow.subscriptions.get(intent.subscription_id, lock=True)
    if sub is None:
        raise InvalidState("the subscription is gone", subscription_id=str(intent.subscription_id))
    return sub


@dataclass(frozen=True, slots=True)
class Fetched:
    """The subscription as Stripe told it, and when: a webhook's re-read is stamped when
    it began, Stripe's answer to a change the worker asked for once it came. So a read
    stamped earlier than an answer may have been served before Stripe applied the change
    (two calls in flight at once are served in either order), never one stamped later.
    """

    remote: ProviderSubscription
    at: datetime


async def fetch(event: ProviderEvent, deps: Deps) -> Fetched:
    """Re-read the subscription a webhook names, before any database transaction opens."""
    assert event.subscription_ref is not None
    at = utc_now()
    return Fetched(await stripe(deps).fetch_subscription(event.subscription_ref), at)


async def sync(event: ProviderEvent, fetched: Fetched, uow: UnitOfWork, deps: Deps) -> None:
    """Apply a Stripe subscription/invoice webhook: the subscription as re-read (`fetch`).

    The read happens before the row is locked, so reads (a webhook's, a change's answer)
    may be applied out of order: ours only moves forward to a later read. A read older
    than the one applied may still tell of a change made at Stripe since (in the
    dashboard, while the worker's own change was in flight): when it tells otherwise than
    ours, the event is retried (TransientError) and the retry reads Stripe again.
    """
    assert event.subscription_ref is not None
    sub = await uow.subscriptions.by_provider_ref(event.subscription_ref, lock=True)
    if sub is None:  # the webhook may overtake the commit of the create command
        raise TransientError(f"no subscription for Stripe {event.subscription_ref} (yet)")
    await _record_invoice(event, sub, uow)
    if sub.provider_synced_at is not None and fetched.at < sub.provider_synced_at:
        if stripe_copy.tells_otherwise(sub, fetched.remote, stripe(deps)):
            raise TransientError(
                f"a read of Stripe {event.subscription_ref} older than the one applied "
                "tells otherwise: reading it again"
            )
        log.info("a later read of Stripe %s is applied already", event.subscription_ref)
        return
    await stripe_copy.apply_remote(
        sub, fetched.remote, fetched.at, stripe(deps), uow, amount_minor=event.amount_minor
    )


async def _record_invoice(event: ProviderEvent, sub: SubscriptionRow, uow: UnitOfWork) -> None:
    """The provider's charge for a period (Stripe's invoice), in our ledger (it moves no
    wallet money), for the amount of the invoice as re-read from the provider."""
    if event.invoice is not None and event.period_charge is PaymentOutcome.SUCCEEDED:
        await stripe_invoices.mirror(event.invoice, sub, uow)
    if event.period_charge is None or not event.amount_minor:
        return
    paid = event.period_charge is PaymentOutcome.SUCCEEDED
    now = uow.clock()
    ref = event.provider_ref if paid else f"{event.provider_ref}:{event.event_id}"
    if await uow.wallet.transaction_by_ref(event.provider, str(ref)) is not None:
        return  # this invoice was recorded from another event that told of it
    charge = Transaction.provider_invoice(
        uuid.uuid5(_IDS, f"{event.provider}:{ref}"), sub.user_id, event.amount_minor,
        event.currency or sub.plan.currency, event.provider, ref, now, paid=paid,
        failure_code=event.failure_code, subscription_id=sub.id, confirmation=event.confirmation,
    )  # fmt: skip
    row = await uow.wallet.record(charge)
    uow.emit(views.payment_succeeded(row) if paid else views.payment_failed(row))
