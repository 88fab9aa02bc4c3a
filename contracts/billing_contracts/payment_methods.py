"""Saved payment methods: commands, the query, reply objects and event data.

A method is named on the wire by the provider's own id (Stripe `pm_...`, a YooKassa
method id), as `Deposit.payment_method_id` and `CreateSubscription.payment_method_id`
name it; a method of another user is answered `not_found`, like one never saved.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field

from billing_contracts.envelope import Command, Query
from billing_contracts.wallet import PaymentAction, Provider, UserId

MethodId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        description="The provider's id of the method (Stripe `pm_...`, a YooKassa method id); "
        "another user's method is answered `not_found`, exactly as one never saved",
        examples=["pm_1QxYz2eZvKYlo2C"],
    ),
]


class SetupPaymentMethod(Command):
    """`billing.payment-method.setup`: start saving a payment method at a provider.

    Stripe: a SetupIntent for the user's customer (`payment_action.client_secret`, to
    confirm with Stripe.js); the method is saved when Stripe confirms it. YooKassa: a
    held payment of the setup amount (`payment_action.confirmation_url`; `return_url`
    required), canceled at YooKassa once the customer confirmed it, so nothing is taken.
    The sandbox saves a test card at once."""

    user_id: UserId
    provider: Provider
    return_url: str | None = Field(default=None, max_length=2048)


class SetupResult(BaseModel):
    setup_id: UUID
    provider: str
    status: str = Field(examples=["pending", "saved"])
    payment_action: PaymentAction | None
    payment_method: PaymentMethodOut | None = None  # when saved at once (the sandbox)


class ListPaymentMethods(Query):
    """`billing.payment-method.list`: the user's saved methods, detached ones left out."""

    user_id: UserId
    provider: Provider | None = None


class DetachPaymentMethod(Command):
    """`billing.payment-method.detach`: remove a saved method; it is never charged again."""

    user_id: UserId
    provider: Provider
    payment_method_id: MethodId


class SetDefaultPaymentMethod(Command):
    """`billing.payment-method.set-default`: the method to use when none is named (one
    default per user and provider)."""

    user_id: UserId
    provider: Provider
    payment_method_id: MethodId


class UpdateSubscriptionPaymentMethod(Command):
    """`billing.subscription.update-payment-method`: the saved method (of the
    subscription's provider) it is charged with from now on: a YooKassa subscription's
    renewals, or a Stripe subscription's `default_payment_method` at Stripe."""

    user_id: UserId
    subscription_id: UUID
    payment_method_id: MethodId


class PaymentMethodOut(BaseModel):
    payment_method_id: str
    provider: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    is_default: bool
    created_at: AwareDatetime


class PaymentMethodList(BaseModel):
    items: list[PaymentMethodOut]


class PaymentMethodEvent(BaseModel):
    """`payment_method.saved` and `payment_method.removed`."""

    user_id: str
    payment_method: PaymentMethodOut


SetupResult.model_rebuild()
