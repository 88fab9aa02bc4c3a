"""Subscription commands, queries and reply objects."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Field,
    StringConstraints,
)

from billing_contracts.coupons import CouponCode
from billing_contracts.envelope import Command, Query
from billing_contracts.plans import PlanCode
from billing_contracts.wallet import PaymentAction, UserId

MAX_QUANTITY = 10_000


class SubscriptionStatus(StrEnum):
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    CANCELED = "canceled"


class PaymentSource(StrEnum):
    BALANCE = "balance"
    STRIPE = "stripe"
    YOOKASSA = "yookassa"


def _check_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(char.isspace() for char in value):
        raise ValueError("email must look like name@domain")
    return value


Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(_check_email)]


class CreateSubscription(Command):
    """`billing.subscription.create`: subscribe the user to a plan."""

    user_id: UserId
    email: Email | None = Field(
        default=None,
        description="Passed to the provider as the customer's e-mail",
        examples=["ada@example.com"],
    )
    plan_code: PlanCode
    payment_source: PaymentSource = Field(
        description="`balance` charges the user's account; `stripe` and `yookassa` charge "
        "the customer's card"
    )
    payment_method_id: str | None = Field(
        default=None,
        max_length=255,
        description="A saved payment method of this user (Stripe `pm_...` attached to the "
        "user's Stripe customer; a YooKassa method saved by an earlier payment of this user, "
        "else `not_found`); without one the user's live default method at that provider "
        "is charged, and with no default the first payment needs the customer (see "
        "`payment_action`)",
        examples=["pm_card_visa"],
    )
    return_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where YooKassa sends the customer back after paying the first period",
        examples=["https://shop.example/billing/return"],
    )
    quantity: int = Field(
        default=1,
        ge=1,
        le=MAX_QUANTITY,
        strict=True,
        description="Seats: every period charges the plan's price times this (Stripe: the "
        "subscription item's quantity)",
        examples=[3],
    )
    coupon: CouponCode | None = Field(
        default=None,
        description="A coupon (`billing.coupon.upsert`): balance and YooKassa subscriptions "
        "get it off their charged periods while it lasts (once: the first, repeating: N, "
        "forever: all; a trial does not count); a Stripe subscription passes its "
        "`stripe_coupon_id` to Stripe (none: `invalid_message`). Unknown: `not_found`, "
        "inactive: `invalid_state`, an amount off in another currency: `currency_mismatch`",
        examples=["WELCOME10"],
    )


_OWNER = (
    "The user the subscription belongs to; another user's subscription is answered "
    "`not_found`, exactly as an id that does not exist"
)


class CancelSubscription(Command):
    """`billing.subscription.cancel`: end one of the user's subscriptions, now or at the end
    of its period."""

    user_id: UserId = Field(description=_OWNER)
    subscription_id: UUID
    at_period_end: bool = Field(
        default=True,
        strict=True,
        description="True: keep it until the paid period ends; false: cancel now",
    )
    reason: str | None = Field(default=None, max_length=500)


class GetSubscriptions(Query):
    """`billing.subscription.get`: one of the user's subscriptions by id, or all of them."""

    user_id: UserId = Field(description=_OWNER)
    subscription_id: UUID | None = Field(
        default=None,
        description="Given: that one subscription (if it is the user's); absent: all of the "
        "user's subscriptions",
    )


class SubscriptionOut(BaseModel):
    id: UUID
    user_id: str
    plan_code: str
    status: SubscriptionStatus
    payment_source: PaymentSource
    current_period_start: AwareDatetime | None
    current_period_end: AwareDatetime | None
    cancel_at_period_end: bool
    plan_version: int | None = Field(
        default=None,
        description="The version of the plan it is on: what its renewals charge",
    )
    # Added with pause and seats; absent from older workers' replies, hence the defaults.
    quantity: int = 1
    pause_at_period_end: bool = False
    paused_until: AwareDatetime | None = None
    # Added with change-plan: a change the renewal of the paid period applies (or none).
    scheduled_plan_code: str | None = None
    scheduled_plan_version: int | None = None
    scheduled_quantity: int | None = None
    # Added with YooKassa's prorated change-plan: a `now` change waiting for its payment
    # (the proration invoice `pending_invoice_id`, open); the subscription switches when
    # YooKassa confirms it, and stays as it is if the payment fails. Until then another
    # change-plan or a cancel now is `invalid_state`.
    pending_plan_code: str | None = Field(
        default=None, description="The plan a change waiting for its payment moves it to"
    )
    pending_plan_version: int | None = None
    pending_quantity: int | None = None
    pending_invoice_id: UUID | None = Field(
        default=None, description="The open proration invoice that payment pays"
    )
    # Added with coupons: the coupon its charged periods are discounted by (balance and
    # YooKassa), and how many charged periods it has discounted so far.
    coupon: str | None = Field(
        default=None, description="The coupon that discounts its charged periods, if any"
    )
    coupon_periods_used: int | None = Field(
        default=None, description="How many charged periods the coupon has discounted"
    )


class SubscriptionCreated(BaseModel):
    subscription: SubscriptionOut
    payment_action: PaymentAction | None


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]
