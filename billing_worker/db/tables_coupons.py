"""Coupons: what `billing.coupon.upsert` sets, and the subscriptions that redeemed one.

Part of the schema declared in :mod:`billing_worker.db.tables` (same conventions, same
metadata). A percent off is `NUMERIC(7, 4)`, exact (never a float), an amount off
integer minor units in its currency; an invoice copies the terms it was discounted by,
so nothing issued depends on this table.
"""

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Numeric, Text
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import (
    text_field,
    timestamp_field,
    updated_at_field,
    zero_field,
)


class Coupon(SQLModel, table=True):
    __tablename__ = "coupons"
    __table_args__ = (
        CheckConstraint("(percent_off IS NULL) <> (amount_off_minor IS NULL)", name="one_kind"),
        CheckConstraint("percent_off > 0 AND percent_off <= 100", name="percent_off_range"),
        CheckConstraint("amount_off_minor > 0", name="amount_off_positive"),
        CheckConstraint("(amount_off_minor IS NULL) = (currency IS NULL)", name="amount_currency"),
        CheckConstraint("duration IN ('once', 'repeating', 'forever')", name="duration"),
        CheckConstraint(
            "(duration = 'repeating') = (duration_in_periods IS NOT NULL) "
            "AND (duration_in_periods IS NULL OR duration_in_periods BETWEEN 1 AND 1000)",
            name="duration_in_periods",
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    code: str = text_field(unique=True)
    name: str = text_field()
    percent_off: Decimal | None = Field(default=None, sa_type=Numeric(7, 4), nullable=True)
    amount_off_minor: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    currency: str | None = text_field(nullable=True)
    duration: str = text_field()
    duration_in_periods: int | None = Field(default=None, nullable=True)
    active: bool = Field(nullable=False)
    stripe_coupon_id: str | None = text_field(nullable=True)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()


class CouponRedemption(SQLModel, table=True):
    """A subscription's coupon and how many charged periods it has discounted; written
    under the subscription's row lock."""

    __tablename__ = "coupon_redemptions"
    __table_args__ = (CheckConstraint("periods_used >= 0", name="periods_used_non_negative"),)

    subscription_id: uuid.UUID = Field(
        foreign_key="subscriptions.id", primary_key=True, ondelete="CASCADE"
    )
    coupon_code: str = Field(sa_type=Text, foreign_key="coupons.code", nullable=False)
    periods_used: int = zero_field()
    created_at: datetime | None = timestamp_field(server_now=True)
