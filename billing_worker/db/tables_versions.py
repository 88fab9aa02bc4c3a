"""Plan versions: the history of the version each subscription is on.

Part of the schema declared in :mod:`billing_worker.db.tables` (same conventions, same
metadata). A subscription's `plan_id` is the version row it is on now; each
`billing.plan.migrate` that moved it, and each `billing.subscription.change-plan`, is one
row here, naming the first period charged on the new version, so `billing-worker audit`
can tell which version every paid period had to be charged on.
"""

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Text, text
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import bigint_identity_pk, timestamp_field


class SubscriptionPlanChange(SQLModel, table=True):
    __tablename__ = "subscription_plan_changes"
    __table_args__ = (
        CheckConstraint("from_period_index >= 0", name="from_period_index_non_negative"),
        CheckConstraint("kind IN ('migrate', 'change_plan')", name="kind"),
    )

    id: int | None = bigint_identity_pk()
    subscription_id: uuid.UUID = Field(
        foreign_key="subscriptions.id", nullable=False, ondelete="CASCADE", index=True
    )
    from_plan_id: uuid.UUID = Field(foreign_key="plans.id", nullable=False)
    to_plan_id: uuid.UUID = Field(foreign_key="plans.id", nullable=False)
    # The first period charged on to_plan_id (the subscription's paid_periods when moved).
    from_period_index: int = Field(nullable=False)
    effective_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    # Migration 0015: `migrate` (billing.plan.migrate, same code, seats kept) or
    # `change_plan` (billing.subscription.change-plan: maybe another code and seats), and
    # the money it moved at once (positive charged, negative credited; null: none).
    kind: str = Field(
        default="migrate", sa_type=Text, nullable=False,
        sa_column_kwargs={"server_default": text("'migrate'")},
    )  # fmt: skip
    from_quantity: int | None = Field(default=None, nullable=True)
    to_quantity: int | None = Field(default=None, nullable=True)
    proration_minor: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    created_at: datetime | None = timestamp_field(server_now=True)
