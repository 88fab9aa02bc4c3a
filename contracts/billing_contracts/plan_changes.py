"""Changing the plan (or the seats) of a live subscription: `billing.subscription.change-plan`.

It replies with the subscription (`SubscriptionOut`); a change scheduled for the period
end shows there as `scheduled_plan_code` / `scheduled_plan_version` / `scheduled_quantity`.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import Field

from billing_contracts.coupons import CouponCode
from billing_contracts.envelope import Command
from billing_contracts.plans import PlanCode
from billing_contracts.subscriptions import MAX_QUANTITY
from billing_contracts.wallet import UserId


class ChangeWhen(StrEnum):
    NOW = "now"
    PERIOD_END = "period_end"


class Proration(StrEnum):
    PRORATE = "prorate"
    NONE = "none"


class ChangePlan(Command):
    """`billing.subscription.change-plan`: move a live subscription to the current version
    of a plan code (its own or another, in the same currency) and/or another quantity.

    `now` + `prorate`: the rest of the paid period is charged (upgrade) or credited to the
    wallet balance (downgrade) at the difference, exactly, in minor units; another interval
    credits the unused part of the old period and starts a new period, charged in full.
    `now` + `none`: switched now, no money moves; the next renewal charges the new terms.
    `period_end`: the renewal that ends the paid period applies it (a later change-plan
    replaces it, a cancel drops it).

    A Stripe-run subscription (same interval only; the target version needs a
    `stripe_price_id`) changes at Stripe first and ours follows Stripe's answer: `now` +
    `prorate` of an active one is Stripe's proration invoice, paid at once with the
    subscription's card (`proration_charged`; a negative total is credited to the
    customer's Stripe balance: `proration_credited`), a decline changes nothing
    (`provider_error`); anything else bills the new price from Stripe's next invoice.
    A YooKassa subscription's `now` + `prorate` upgrade is charged with its saved
    YooKassa method: the reply may show the change pending (`pending_plan_code`,
    `pending_invoice_id`: the open proration invoice) and the plan switches only when
    YooKassa confirms the payment (`subscription.updated`); a failed payment changes
    nothing and voids that invoice. Another interval with `prorate` on YooKassa is
    `invalid_message` (not built yet).
    """

    user_id: UserId = Field(
        description="The user the subscription belongs to; another user's subscription is "
        "answered `not_found`, exactly as an id that does not exist"
    )
    subscription_id: UUID
    plan_code: PlanCode = Field(
        description="The plan to move to (its current active version); the subscription's own "
        "code with another quantity is a change of seats"
    )
    quantity: int | None = Field(
        default=None,
        ge=1,
        le=MAX_QUANTITY,
        strict=True,
        description="Seats on the new terms; absent: keep the subscription's quantity",
        examples=[5],
    )
    when: ChangeWhen = Field(
        default=ChangeWhen.NOW,
        description="`now`, or `period_end`: applied by the renewal of the paid period",
    )
    proration: Proration = Field(
        default=Proration.PRORATE,
        description="With `when` = `now`: `prorate` charges or credits the rest of the paid "
        "period at the difference; `none` moves no money (ignored with `period_end`)",
    )
    coupon: CouponCode | None = Field(
        default=None,
        description="A coupon (`billing.coupon.upsert`) for the subscription from its next "
        "charged period on, in place of the one it has (balance and YooKassa; a Stripe-run "
        "subscription: `invalid_message`). A proration is not discounted. Unknown: "
        "`not_found`; inactive: `invalid_state`; an amount off in another currency: "
        "`currency_mismatch`. With the subscription's own plan and seats it changes only the "
        "coupon",
        examples=["LAUNCH50"],
    )
