"""Subscriptions, invoices and the gap-free invoice number sequence.

Part of the schema declared in :mod:`billing_worker.db.tables` (same conventions,
same metadata); import either module and both are registered.

Invoice numbers (``INV-2026-000001``) are gap-free per year: the number is taken with
``UPDATE number_sequences SET last_value = last_value + 1 WHERE name = $1 AND year = $2
RETURNING last_value`` (after an ``INSERT ... ON CONFLICT DO NOTHING`` of the year's
row) in the same transaction that inserts the invoice, so a rollback gives the number
back and concurrent writers queue on the row lock.
"""

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import (
    bigint_identity_pk,
    currency_check,
    flag_field,
    minor_units_field,
    one_of,
    text_field,
    timestamp_field,
    updated_at_field,
    zero_field,
)

SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "paused",
)
# At most one of these per (user, plan); see uq_subscriptions_one_live_per_user_plan.
LIVE_SUBSCRIPTION_STATUSES = ("incomplete", "trialing", "active", "past_due", "paused")
PAYMENT_SOURCES = ("balance", "stripe", "yookassa")
INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")


class Subscription(SQLModel, table=True):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(one_of("status", SUBSCRIPTION_STATUSES), name="status"),
        CheckConstraint(one_of("payment_source", PAYMENT_SOURCES), name="payment_source"),
        CheckConstraint("quantity BETWEEN 1 AND 10000", name="quantity_range"),
        CheckConstraint(  # migration 0015
            "(scheduled_plan_id IS NULL) = (scheduled_quantity IS NULL) "
            "AND (scheduled_quantity IS NULL OR scheduled_quantity BETWEEN 1 AND 10000)",
            name="scheduled_change",
        ),
        CheckConstraint(  # migration 0018
            "(pending_plan_id IS NULL) = (pending_quantity IS NULL) "
            "AND (pending_plan_id IS NULL) = (pending_invoice_id IS NULL) "
            "AND (pending_quantity IS NULL OR pending_quantity BETWEEN 1 AND 10000)",
            name="pending_change",
        ),
        Index(  # per plan code, across its versions (migration 0011)
            "uq_subscriptions_one_live_per_user_plan",
            "user_id",
            "plan_code",
            unique=True,
            postgresql_where=text(one_of("status", LIVE_SUBSCRIPTION_STATUSES)),
        ),
        # The renewal job scans "active/trialing/past_due and due before X".
        Index("ix_subscriptions_status_period_end", "status", "current_period_end"),
        # ... and its past-due and paused arms by their own times (migration 0019).
        Index(
            "ix_subscriptions_past_due_next_attempt",
            "next_attempt_at",
            postgresql_where=text("status = 'past_due'"),
        ),
        Index(
            "ix_subscriptions_paused_until",
            "paused_until",
            postgresql_where=text("status = 'paused'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: str = Field(
        sa_type=Text, foreign_key="billing_users.user_id", nullable=False, index=True
    )
    plan_id: uuid.UUID = Field(foreign_key="plans.id", nullable=False)  # the version row
    plan_code: str = text_field()  # the plan's code, copied at insert and never changed
    status: str = text_field()
    payment_source: str = text_field()
    payment_method_id: uuid.UUID | None = Field(
        default=None, foreign_key="payment_methods.id", nullable=True
    )
    provider_subscription_id: str | None = text_field(nullable=True, unique=True)
    current_period_start: datetime | None = timestamp_field()
    current_period_end: datetime | None = timestamp_field()
    billing_anchor: datetime | None = timestamp_field()
    trial_end: datetime | None = timestamp_field()
    cancel_at_period_end: bool = flag_field(False)
    canceled_at: datetime | None = timestamp_field()
    cancel_reason: str | None = text_field(nullable=True)
    # Periods paid so far, which is also the index of the next period to charge;
    # period i runs from boundary(anchor, i) to boundary(anchor, i + 1).
    paid_periods: int = zero_field()
    # Dunning: failed charge attempts of the current period, and when to try again.
    dunning_attempts: int = zero_field()
    next_attempt_at: datetime | None = timestamp_field()
    # The period index billing_anchor is period 0 of (a migration to another interval
    # re-anchors at a period end): period i runs from boundary(anchor, i - offset).
    anchor_offset: int = zero_field()
    # When the provider state last applied (Stripe) was read: a webhook whose read is
    # older than the one applied cannot move the subscription back.
    provider_synced_at: datetime | None = timestamp_field()
    # Pause (migration 0013): a pause that takes effect at the paid period's end, and
    # when a pause ends by itself.
    pause_at_period_end: bool = flag_field(False)
    paused_until: datetime | None = timestamp_field()
    # `restarts` counts the unpauses (each re-anchors: anchor_offset) and keeps their
    # charges' ids apart.
    restarts: int = zero_field()
    # Seats: each period charges the plan's price times this.
    quantity: int = Field(default=1, nullable=False, sa_column_kwargs={"server_default": text("1")})
    # A plan change the renewal of the paid period applies (migration 0015): the target
    # version row and the seats on it, both or none.
    scheduled_plan_id: uuid.UUID | None = Field(default=None, foreign_key="plans.id", nullable=True)
    scheduled_quantity: int | None = Field(default=None, nullable=True)
    # A prorated change waiting for its provider payment (migration 0018): the target
    # version row, the seats and the open proration invoice the payment pays; all or none.
    pending_plan_id: uuid.UUID | None = Field(default=None, foreign_key="plans.id", nullable=True)
    pending_quantity: int | None = Field(default=None, nullable=True)
    pending_invoice_id: uuid.UUID | None = Field(default=None, nullable=True)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()


class SubscriptionCharge(SQLModel, table=True):
    """One row per paid period: the database guarantees a period is charged at most once."""

    __tablename__ = "subscription_charges"
    __table_args__ = (
        UniqueConstraint("subscription_id", "period_index", name="uq_subscription_charges_period"),
        CheckConstraint("period_index >= 0", name="period_index_non_negative"),
    )

    id: int | None = bigint_identity_pk()
    subscription_id: uuid.UUID = Field(
        foreign_key="subscriptions.id", nullable=False, ondelete="CASCADE"
    )
    period_index: int = Field(nullable=False)
    period_start: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    period_end: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    transaction_id: uuid.UUID | None = Field(
        default=None, foreign_key="transactions.id", nullable=True, unique=True
    )
    created_at: datetime | None = timestamp_field(server_now=True)
    # The plan version row the period was charged on (migration 0011).
    plan_id: uuid.UUID | None = Field(default=None, foreign_key="plans.id", nullable=True)


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint("number ~ '^INV-[0-9]{4}-[0-9]{6,}$'", name="number_format"),
        CheckConstraint(one_of("status", INVOICE_STATUSES), name="status"),
        currency_check(),
        CheckConstraint("subtotal_minor >= 0", name="subtotal_non_negative"),
        CheckConstraint("total_minor >= 0", name="total_non_negative"),
        CheckConstraint("tax_minor >= 0", name="tax_non_negative"),
        # Coupons (migration 0016): the discount is at most the subtotal; a discounted
        # invoice keeps the coupon's code and terms (one of percent / amount off).
        CheckConstraint("discount_minor BETWEEN 0 AND subtotal_minor", name="discount_range"),
        CheckConstraint(
            "(coupon_code IS NULL AND coupon_percent_off IS NULL "
            "AND coupon_amount_off_minor IS NULL) OR (coupon_code IS NOT NULL "
            "AND (coupon_percent_off IS NULL) <> (coupon_amount_off_minor IS NULL))",
            name="coupon_copied",
        ),
        Index("ix_invoices_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        # One invoice per subscription period (migration 0012); both or neither are set.
        UniqueConstraint("subscription_id", "period_index", name="uq_invoices_subscription_period"),
        # A Stripe invoice's mirror names its subscription, not a period of ours (0017).
        CheckConstraint(
            "(subscription_id IS NULL) = (period_index IS NULL) OR stripe_invoice_id IS NOT NULL",
            name="subscription_period",
        ),
        # The overdue job's scan: open invoices past their due date, not yet announced.
        Index(
            "ix_invoices_overdue_due",
            "due_at",
            postgresql_where=text("status = 'open' AND overdue_at IS NULL AND due_at IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    number: str = text_field(unique=True)
    user_id: str = Field(sa_type=Text, foreign_key="billing_users.user_id", nullable=False)
    order_id: str | None = text_field(nullable=True, unique=True)
    status: str = text_field()
    currency: str = text_field()
    subtotal_minor: int = minor_units_field()
    total_minor: int = minor_units_field()
    due_at: datetime | None = timestamp_field()
    paid_at: datetime | None = timestamp_field()
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
    # The invoice lifecycle (migration 0012): a subscription period's invoice, when the
    # overdue job announced it, when it was voided or written off, and why.
    subscription_id: uuid.UUID | None = Field(
        default=None, foreign_key="subscriptions.id", nullable=True
    )
    period_index: int | None = Field(default=None, nullable=True)
    overdue_at: datetime | None = timestamp_field()
    voided_at: datetime | None = timestamp_field()
    uncollectible_at: datetime | None = timestamp_field()
    status_reason: str | None = text_field(nullable=True)
    # Tax rates (migration 0014): the sum of the lines' taxes; total = subtotal + tax.
    tax_minor: int = zero_field(big=True)
    # Coupons (migration 0016): total = subtotal - discount + tax; the coupon's terms copied.
    discount_minor: int = zero_field(big=True)
    coupon_code: str | None = text_field(nullable=True)
    coupon_percent_off: Decimal | None = Field(default=None, sa_type=Numeric(7, 4), nullable=True)
    coupon_amount_off_minor: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    # The Stripe invoice this one mirrors (migration 0017): one mirror per Stripe invoice.
    stripe_invoice_id: str | None = text_field(nullable=True, unique=True)


class InvoiceLine(SQLModel, table=True):
    __tablename__ = "invoice_lines"
    __table_args__ = (
        CheckConstraint('"position" >= 0', name="position_non_negative"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # A proration line (a Stripe mirror's, migration 0017) may be a credit.
        CheckConstraint("unit_price_minor >= 0 OR proration", name="unit_price_non_negative"),
        CheckConstraint("amount_minor >= 0 OR proration", name="amount_non_negative"),
        UniqueConstraint("invoice_id", "position"),
        # Tax rates (migration 0014): a taxed line has all three of its rate's copies.
        CheckConstraint(
            "tax_minor BETWEEN 0 AND amount_minor OR (proration AND tax_minor = 0)",
            name="tax_range",
        ),
        CheckConstraint(
            "(tax_rate_code IS NULL) = (tax_percent IS NULL) "
            "AND (tax_rate_code IS NULL) = (tax_inclusive IS NULL)",
            name="tax_rate_copied",
        ),
        # Coupons (migration 0016): the line's share of the invoice's discount.
        CheckConstraint(
            "discount_minor BETWEEN 0 AND amount_minor OR (proration AND discount_minor = 0)",
            name="discount_range",
        ),
    )

    id: int | None = bigint_identity_pk()
    invoice_id: uuid.UUID = Field(foreign_key="invoices.id", ondelete="CASCADE", nullable=False)
    position: int = Field(nullable=False)
    description: str = text_field()
    quantity: int = Field(default=1, nullable=False)
    unit_price_minor: int = minor_units_field()
    amount_minor: int = minor_units_field()
    # The rate the line was issued with (a copy: a later change of the rate changes nothing).
    tax_rate_code: str | None = text_field(nullable=True)
    tax_percent: Decimal | None = Field(default=None, sa_type=Numeric(6, 4), nullable=True)
    tax_inclusive: bool | None = Field(default=None, nullable=True)
    tax_minor: int = zero_field(big=True)
    discount_minor: int = zero_field(big=True)
    proration: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": text("false")}
    )


class NumberSequence(SQLModel, table=True):
    """The last number handed out per sequence name (``invoice``) and year."""

    __tablename__ = "number_sequences"
    __table_args__ = (CheckConstraint("last_value >= 0", name="last_value_non_negative"),)

    name: str = Field(sa_type=Text, primary_key=True)
    year: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    last_value: int = zero_field(big=True)
