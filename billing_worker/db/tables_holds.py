"""Holds: money reserved on an account until captured, released or expired.

Part of the schema declared in :mod:`billing_worker.db.tables` (same conventions, same
metadata). An open hold's amount is counted in its account's ``held_minor``
(``virtual_accounts``), whose CHECKs keep ``0 <= held_minor <= balance_minor``.
"""

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Index, Text, text
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import (
    bigint_identity_pk,
    currency_check,
    minor_units_field,
    one_of,
    text_field,
    timestamp_field,
    updated_at_field,
    zero_field,
)

HOLD_STATUSES = ("open", "captured", "released", "expired")


class Hold(SQLModel, table=True):
    """A reservation of ``amount_minor``; its moves are audited in ``hold_transitions``."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint(one_of("status", HOLD_STATUSES), name="status"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "captured_minor >= 0 AND captured_minor <= amount_minor", name="captured_within_hold"
        ),
        CheckConstraint(
            "(status = 'captured') = (captured_minor > 0 AND capture_transaction_id IS NOT NULL)",
            name="captured",
        ),
        CheckConstraint("(status = 'open') = (closed_at IS NULL)", name="closed_at"),
        currency_check(),
        # The expiry job's candidates: open holds by expiry.
        Index("ix_holds_open_expires_at", "expires_at", postgresql_where=text("status = 'open'")),
    )

    id: uuid.UUID = Field(primary_key=True)
    user_id: str = Field(
        sa_type=Text, foreign_key="billing_users.user_id", nullable=False, index=True
    )
    account_id: uuid.UUID = Field(foreign_key="virtual_accounts.id", nullable=False, index=True)
    currency: str = text_field()
    amount_minor: int = minor_units_field()
    captured_minor: int = zero_field(big=True)
    status: str = text_field()
    reference: str | None = text_field(nullable=True)
    # The withdrawal a capture made.
    capture_transaction_id: uuid.UUID | None = Field(
        default=None, foreign_key="transactions.id", nullable=True
    )
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
    closed_at: datetime | None = timestamp_field()


class HoldTransition(SQLModel, table=True):
    """Audit row for every move of a hold (``from_status`` NULL on creation)."""

    __tablename__ = "hold_transitions"
    __table_args__ = (
        CheckConstraint(
            f"from_status IS NULL OR {one_of('from_status', HOLD_STATUSES)}", name="from_status"
        ),
        CheckConstraint(one_of("to_status", HOLD_STATUSES), name="to_status"),
    )

    id: int | None = bigint_identity_pk()
    hold_id: uuid.UUID = Field(
        foreign_key="holds.id", ondelete="CASCADE", nullable=False, index=True
    )
    from_status: str | None = text_field(nullable=True)
    to_status: str = text_field()
    reason: str | None = text_field(nullable=True)
    at: datetime | None = timestamp_field(server_now=True)
