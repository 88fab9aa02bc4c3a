"""Stripe-run subscriptions: Stripe charges the card; its webhooks drive our copy.

On every subscription webhook the worker re-reads the subscription from Stripe and
applies what it finds, so events arriving twice or out of order cannot move the
subscription backwards.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any, Protocol, cast

from billing_contracts.events import (
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_RENEWED,
)
from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_contracts.wallet import PaymentAction, TransactionKind
from billing_contracts.wallet import TransactionStatus as Tx
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.uow import UnitOfWork
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.domain.events import ProviderEvent
from billing_worker.domain.subscriptions import ALLOWED
from billing_worker.domain.transactions import path
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import insert
from billing_worker.handlers.subscription_views import subscription_event, subscription_out
from billing_worker.handlers.wallet import provider_customer
from billing_worker.providers.base import PaymentGateway, SubscriptionGateway, UnknownProvider

log = logging.getLogger(__name__)
_IDS = uuid.UUID("2b6f7c1e-8e0a-4d7b-9a53-31e4f0a9c6d2")

STATUS = {
    "incomplete": Sub.INCOMPLETE,
    "incomplete_expired": Sub.INCOMPLETE_EXPIRED,
    "trialing": Sub.TRIALING,
    "active": Sub.ACTIVE,
    "past_due": Sub.PAST_DUE,
    "unpaid": Sub.PAST_DUE,
    "paused": Sub.PAST_DUE,
    "canceled": Sub.CANCELED,
}


class StripeBilling(PaymentGateway, SubscriptionGateway, Protocol):
    """What this module needs of the Stripe gateway."""


def stripe(deps: Deps) -> StripeBilling:
    try:
        gateway = deps.gateways.get("stripe")
    except UnknownProvider:
        raise ProviderError("Stripe is not configured on this worker") from None
    return cast(StripeBilling, gateway)


async def create(
    command: CreateSubscription, sub: SubscriptionRow, uow: UnitOfWork, deps: Deps
) -> SubscriptionCreated:
    plan = sub.plan
    if not plan.stripe_price_id:
        raise ProviderError(f"plan {plan.code} has no stripe_price_id", plan_code=plan.code)
    gateway = stripe(deps)
    customer = await provider_customer(gateway, sub.user_id, uow)
    assert customer is not None
    remote = await gateway.create_subscription(
        customer_ref=customer,
        price_ref=plan.stripe_price_id,
        payment_method_id=command.payment_method_id,
        trial_days=plan.trial_days,
        idempotency_key=str(sub.id),
        metadata={"subscription_id": str(sub.id), "user_id": sub.user_id},
    )
    status = STATUS.get(remote.status, Sub.INCOMPLETE)
    sub = dataclasses.replace(
        sub, status=status.value, provider_subscription_id=remote.ref, billing_anchor=None,
        current_period_start=remote.period_start, current_period_end=remote.period_end,
        trial_end=remote.period_end if status is Sub.TRIALING else None,
        cancel_at_period_end=remote.cancel_at_period_end,
    )  # fmt: skip
    await insert(sub, uow)
    if status in (Sub.ACTIVE, Sub.TRIALING):
        uow.emit(subscription_event(SUBSCRIPTION_CREATED, sub))
    action = None
    if remote.client_secret:
        action = PaymentAction(type="client_secret", client_secret=remote.client_secret)
    return SubscriptionCreated(subscription=subscription_out(sub), payment_action=action)


async def cancel(sub: SubscriptionRow, at_period_end: bool, deps: Deps) -> None:
    if sub.provider_subscription_id:
        await stripe(deps).cancel_subscription(
            sub.provider_subscription_id, at_period_end=at_period_end
        )


async def sync(event: ProviderEvent, uow: UnitOfWork, deps: Deps) -> None:
    """Apply a Stripe subscription/invoice webhook by re-reading the subscription."""
    assert event.subscription_ref is not None
    sub = await uow.subscriptions.by_provider_ref(event.subscription_ref, lock=True)
    if sub is None:  # the webhook may overtake the commit of the create command
        raise TransientError(f"no subscription for Stripe {event.subscription_ref} (yet)")
    remote = await stripe(deps).fetch_subscription(event.subscription_ref)
    await _record_invoice(event, sub, uow)
    old, new = Sub(sub.status), STATUS.get(remote.status, Sub(sub.status))
    if new is not old and new not in ALLOWED[old]:
        log.warning("Stripe says %s for a %s subscription %s: keeping ours", new, old, sub.id)
        new = old
    changes: dict[str, Any] = {
        "status": new.value,
        "current_period_start": remote.period_start,
        "current_period_end": remote.period_end,
        "cancel_at_period_end": remote.cancel_at_period_end,
    }
    if new in (Sub.CANCELED, Sub.INCOMPLETE_EXPIRED) and old is not new:
        changes["canceled_at"] = uow.clock()
    await uow.subscriptions.update(sub.id, **changes)
    moved = dataclasses.replace(sub, **changes)
    for kind in _announcements(sub, old, new, remote.period_end):
        uow.emit(subscription_event(kind, moved, amount_minor=event.amount_minor))


def _announcements(sub: SubscriptionRow, old: Sub, new: Sub, period_end: Any) -> list[str]:
    if old is new:
        advanced = new is Sub.ACTIVE and period_end and sub.current_period_end != period_end
        return [SUBSCRIPTION_RENEWED] if advanced else []
    if old is Sub.INCOMPLETE and new in (Sub.ACTIVE, Sub.TRIALING):
        return [SUBSCRIPTION_CREATED]
    return {
        Sub.PAST_DUE: [SUBSCRIPTION_PAST_DUE],
        Sub.CANCELED: [SUBSCRIPTION_CANCELED],
        Sub.ACTIVE: [SUBSCRIPTION_RENEWED],  # past_due or trialing -> active: a paid period
    }.get(new, [])


async def _record_invoice(event: ProviderEvent, sub: SubscriptionRow, uow: UnitOfWork) -> None:
    """Stripe's charge for a period, in our ledger (it moves no wallet money), for the
    amount of the invoice as re-read from Stripe."""
    if event.event_type not in ("invoice.paid", "invoice.payment_failed") or not event.amount_minor:
        return
    paid = event.event_type == "invoice.paid"
    now = uow.clock()
    ref = event.provider_ref if paid else f"{event.provider_ref}:{event.event_id}"
    if await uow.wallet.transaction_by_ref("stripe", str(ref)) is not None:
        return  # this invoice was recorded from another event that told of it
    row = TransactionRow(
        id=uuid.uuid5(_IDS, f"stripe:{ref}"), user_id=sub.user_id, account_id=None,
        kind=TransactionKind.SUBSCRIPTION_CHARGE, status=Tx.COMPLETED if paid else Tx.FAILED,
        amount_minor=event.amount_minor, currency=event.currency or sub.plan.currency,
        provider="stripe", provider_ref=ref, created_at=now, completed_at=now if paid else None,
        failure_code=event.failure_code, subscription_id=sub.id,
        provider_confirmation=event.confirmation if paid else None,
    )  # fmt: skip
    trail = path(Tx.CREATED, Tx.PROCESSING, Tx.COMPLETED) if paid else path(Tx.CREATED, Tx.FAILED)
    await uow.wallet.add_transaction(row, trail)
    uow.emit(views.payment_succeeded(row) if paid else views.payment_failed(row))
