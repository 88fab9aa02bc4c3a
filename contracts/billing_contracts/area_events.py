"""Data of the subscription and invoice events on `billing.events` (types in `events`)."""

from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field

from billing_contracts.coupons import DiscountOut
from billing_contracts.invoices import InvoiceLineOut, InvoiceStatus
from billing_contracts.money import Money
from billing_contracts.subscriptions import PaymentSource, SubscriptionStatus


class SubscriptionEvent(BaseModel):
    """`subscription.created`, `.renewed`, `.past_due`, `.paused`, `.resumed` and
    `.canceled`."""

    subscription_id: UUID
    user_id: str
    plan_code: str
    status: SubscriptionStatus
    payment_source: PaymentSource
    current_period_start: AwareDatetime | None
    current_period_end: AwareDatetime | None
    cancel_at_period_end: bool
    reason: str | None = None
    amount: Money | None = None
    plan_version: int | None = None  # the plan version it is on (migration 0011 on)
    # Added with pause and seats (absent from older workers' events, hence the defaults).
    quantity: int = 1
    pause_at_period_end: bool = False
    paused_until: AwareDatetime | None = None


class SubscriptionUpdated(SubscriptionEvent):
    """`subscription.updated`: moved to another version of its plan by `billing.plan.migrate`
    (`plan_version` is the new one); its next period, from `effective_at`, charges it. Or
    changed by `billing.subscription.change-plan` (`change` names it; `plan_code`,
    `plan_version` and `quantity` are the new terms, `from_*` the old ones)."""

    from_plan_version: int
    effective_at: AwareDatetime
    # Added with change-plan (absent from plan.migrate's and older workers' events).
    change: str | None = None  # "change_plan"; None: billing.plan.migrate
    from_plan_code: str | None = None
    from_quantity: int | None = None
    when: str | None = None  # "now" | "period_end"
    scheduled: bool | None = None  # True: recorded now, applied by the period's renewal
    proration: str | None = None  # "prorate" | "none"
    # The money the change moved now: charged (upgrade) or credited to the balance
    # (downgrade), a decimal string in the currency; None: nothing moved.
    proration_charged: Money | None = None
    proration_credited: Money | None = None


class InvoiceEvent(BaseModel):
    """`invoice.created`, `.paid`, `.voided`, `.uncollectible` and `.overdue`."""

    invoice_id: UUID
    number: str
    user_id: str
    order_id: str | None
    status: InvoiceStatus
    currency: str
    lines: list[InvoiceLineOut]
    subtotal: Money
    total: Money
    due_at: AwareDatetime | None
    paid_at: AwareDatetime | None
    # Added with the invoice lifecycle (see `InvoiceOut`); absent from older workers.
    subscription_id: UUID | None = None
    period_index: int | None = None
    overdue_at: AwareDatetime | None = None
    voided_at: AwareDatetime | None = None
    uncollectible_at: AwareDatetime | None = None
    reason: str | None = None
    # Added with tax rates (subtotal = the lines' nets, total = subtotal + tax).
    tax: Money | None = None
    # Added with coupons (total = subtotal - discount + tax).
    discount: Money | None = None
    discounts: list[DiscountOut] = Field(default_factory=list)
