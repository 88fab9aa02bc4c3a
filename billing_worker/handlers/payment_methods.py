"""Saved payment methods: list, detach, set the default, a subscription's method.

A method is named by the provider's id and used only by its owner: another user's (or
a detached or unknown) method is `not_found`. Detaching and setting the default call
the provider (Stripe: `PaymentMethod.detach`, the customer's
`invoice_settings.default_payment_method`) in two phases, as every provider call does:
phase one checks the owner and commits an intent (kind `payment_method_setup`, the one
intent kind of saved methods: `request.action` says which call), phase two calls the
provider holding no connection, phase three records the change and the reply.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel

from billing_contracts import events as ev
from billing_contracts.payment_methods import (
    DetachPaymentMethod,
    ListPaymentMethods,
    PaymentMethodEvent,
    PaymentMethodList,
    PaymentMethodOut,
    SetDefaultPaymentMethod,
    UpdateSubscriptionPaymentMethod,
)
from billing_contracts.subscriptions import PaymentSource, SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.payment_methods import Card, MethodRow
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.ledger import derived_id
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import configured
from billing_worker.handlers.subscription_views import subscription_out
from billing_worker.ports import UnitOfWork
from billing_worker.providers.methods import methods_of

SETUP = "payment_method_setup"  # the intent kind of every provider call about saved methods
# its `request.action`s besides "setup": detach, set the default, a Stripe subscription's
DETACH, DEFAULT, SUBSCRIPTION = "detach", "default", "subscription"


def method_out(row: MethodRow) -> PaymentMethodOut:
    return PaymentMethodOut(
        payment_method_id=row.ref, provider=row.provider, brand=row.card.brand,
        last4=row.card.last4, exp_month=row.card.exp_month, exp_year=row.card.exp_year,
        is_default=row.is_default, created_at=row.created_at,
    )  # fmt: skip


def method_event(type_: str, row: MethodRow) -> DomainEvent:
    data = PaymentMethodEvent(user_id=row.user_id, payment_method=method_out(row))
    return DomainEvent(type_, data.model_dump(mode="json"))


async def owned(uow: UnitOfWork, user_id: str, provider: str, ref: str) -> MethodRow:
    """The user's own live method, locked; `not_found` for anyone else's, exactly as for
    one never saved (the reply does not tell whether it exists)."""
    row = await uow.methods.get(user_id, provider, ref, lock=True)
    if row is None:
        raise NotFound(f"no saved {provider} payment method {ref}", payment_method_id=ref)
    return row


async def remember(
    uow: UnitOfWork, user_id: str, provider: str, ref: str, card: Card
) -> MethodRow | None:
    """Save a method the provider confirmed for this user: `payment_method.saved` once,
    the default when the user has none at the provider. None when it is another user's."""
    row, created = await uow.methods.save(user_id, provider, ref, card)
    if row.user_id != user_id:
        return None
    if created:
        if await uow.methods.default_of(user_id, provider) is None:
            await uow.methods.set_default(user_id, provider, row.id)
            row = await uow.methods.get(user_id, provider, ref) or row
        uow.emit(method_event(ev.PAYMENT_METHOD_SAVED, row))
    return row


async def list_methods(query: ListPaymentMethods, uow: UnitOfWork, deps: Deps) -> PaymentMethodList:
    provider = query.provider.value if query.provider else None
    rows = await uow.methods.of_user(query.user_id, provider)
    return PaymentMethodList(items=[method_out(row) for row in rows])


async def _begin(
    action: str, user_id: str, provider: str, ref: str, key: str, uow: UnitOfWork, deps: Deps
) -> Intent:
    gateway = configured(deps, provider)
    row = await owned(uow, user_id, gateway.name, ref)
    customer = await uow.users.customer_ref(user_id, provider) if gateway.needs_customer else None
    return Intent(
        id=derived_id(f"payment-method-{action}", user_id, key), kind=SETUP,
        provider=gateway.name, user_id=user_id, customer_ref=customer,
        request={"action": action, "payment_method_id": ref, "method": _snapshot(row)},
    )  # fmt: skip


def _snapshot(row: MethodRow) -> dict[str, Any]:
    """The method as phase one found it: the reply when a concurrent command detached it
    before phase three (phase three must answer, never fail: the provider call is made)."""
    return method_out(row).model_dump(mode="json")


async def detach(command: DetachPaymentMethod, uow: UnitOfWork, deps: Deps) -> Intent:
    return await _begin(DETACH, command.user_id, command.provider.value,
                        command.payment_method_id, command.idempotency_key, uow, deps)  # fmt: skip


async def set_default(command: SetDefaultPaymentMethod, uow: UnitOfWork, deps: Deps) -> Intent:
    return await _begin(DEFAULT, command.user_id, command.provider.value,
                        command.payment_method_id, command.idempotency_key, uow, deps)  # fmt: skip


async def call_change(intent: Intent, deps: Deps) -> None:
    """Phase two of detach / set-default: the provider's call, no connection held."""
    provider = methods_of(configured(deps, intent.provider))
    ref = str(intent.request["payment_method_id"])
    if intent.request["action"] == DETACH:
        await provider.detach_method(ref)
    elif intent.request["action"] == SUBSCRIPTION:
        await provider.set_subscription_method(str(intent.request["subscription_ref"]), ref)
    else:
        await provider.make_default(intent.customer_ref, ref)


async def finish_change(intent: Intent, _: Any, uow: UnitOfWork) -> BaseModel:
    """Phase three: the method detached (kept for history), the only default, or the
    Stripe subscription's."""
    ref = str(intent.request["payment_method_id"])
    row = await uow.methods.get(intent.user_id, intent.provider, ref, lock=True)
    if row is None:  # detached by another command meanwhile: nothing left to change
        gone = PaymentMethodOut.model_validate(intent.request["method"])
        if intent.request["action"] == SUBSCRIPTION and intent.subscription_id is not None:
            return await _use_method(intent.subscription_id, None, uow)
        return gone.model_copy(update={"is_default": False})
    if intent.request["action"] == SUBSCRIPTION and intent.subscription_id is not None:
        return await _use_method(intent.subscription_id, row, uow)
    if intent.request["action"] == DETACH:
        await uow.methods.detach(row.id, uow.clock())
        uow.emit(method_event(ev.PAYMENT_METHOD_REMOVED, row))
        return method_out(row)
    await uow.methods.set_default(intent.user_id, intent.provider, row.id)
    return method_out(await owned(uow, intent.user_id, intent.provider, ref))


async def update_subscription_method(
    command: UpdateSubscriptionPaymentMethod, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | Intent:
    """The saved method a YooKassa subscription's renewals charge from now on; for one
    Stripe runs, Stripe's `default_payment_method` first (an `Intent`)."""
    sub = await uow.subscriptions.get(command.subscription_id, lock=True)
    if sub is None or sub.user_id != command.user_id:  # another's: exactly as a missing one
        raise NotFound(f"no subscription {command.subscription_id}")
    if Sub(sub.status) not in LIVE:
        raise InvalidState(f"the subscription is already {sub.status}", status=sub.status)
    stripe_run = sub.payment_source == PaymentSource.STRIPE and sub.provider_subscription_id
    if sub.payment_source != PaymentSource.YOOKASSA and not stripe_run:
        raise InvalidState(
            f"a {sub.payment_source} subscription has no saved method to change",
            payment_source=sub.payment_source,
        )
    method = await owned(uow, command.user_id, sub.payment_source, command.payment_method_id)
    if not stripe_run:
        return await _use_method(sub.id, method, uow)
    if await uow.intents.of_subscription(sub.id):  # its answer must find it as it left it
        raise InvalidState("a provider call for this subscription is in flight; try again "
                           "shortly", status=sub.status)  # fmt: skip
    configured(deps, PaymentSource.STRIPE.value)
    return Intent(
        id=derived_id("subscription.update-payment-method", command.user_id,
                      command.idempotency_key),
        kind=SETUP, provider=PaymentSource.STRIPE.value, user_id=command.user_id,
        subscription_id=sub.id,
        request={"action": SUBSCRIPTION, "payment_method_id": method.ref,
                 "subscription_ref": sub.provider_subscription_id},
    )  # fmt: skip


async def _use_method(
    subscription_id: UUID, method: MethodRow | None, uow: UnitOfWork
) -> SubscriptionOut:
    if method is not None:
        await uow.subscriptions.update(subscription_id, payment_method_id=method.id)
    updated = await uow.subscriptions.get(subscription_id)
    assert updated is not None
    return subscription_out(updated)
