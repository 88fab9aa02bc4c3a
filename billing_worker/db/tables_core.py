"""The wallet's and the service's tables: users, plans, payment methods, accounts,
transactions and their trail, service secrets, idempotency records, the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import (
    PROVIDERS,
    TRANSACTION_KINDS,
    TRANSACTION_PROVIDERS,
    TRANSACTION_STATUSES,
    bigint_identity_pk,
    currency_check,
    flag_field,
    jsonb_object_field,
    minor_units_field,
    one_of,
    text_field,
    timestamp_field,
    updated_at_field,
    zero_field,
)


class BillingUser(SQLModel, table=True):
    __tablename__ = "billing_users"
    __table_args__ = (
        CheckConstraint("char_length(user_id) BETWEEN 1 AND 255", name="user_id_length"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: str = text_field(unique=True)
    email: str | None = text_field(nullable=True)
    stripe_customer_id: str | None = text_field(nullable=True, unique=True)
    yookassa_customer_id: str | None = text_field(nullable=True)
    created_at: datetime | None = timestamp_field(server_now=True)


class Plan(SQLModel, table=True):
    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("price_minor >= 0", name="price_non_negative"),
        currency_check(),
        CheckConstraint(one_of('"interval"', ("day", "week", "month", "year")), name="interval"),
        CheckConstraint("interval_count > 0", name="interval_count_positive"),
        CheckConstraint("trial_days >= 0", name="trial_days_non_negative"),
        CheckConstraint("version > 0", name="version_positive"),
        # One row per version of a plan; the current version is the highest (0011).
        UniqueConstraint("code", "version"),
        CheckConstraint(
            "(tax_rate_code IS NULL) = (tax_percent IS NULL) "
            "AND (tax_rate_code IS NULL) = (tax_inclusive IS NULL)",
            name="tax_rate_copied",
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    code: str = text_field()
    name: str = text_field()
    price_minor: int = minor_units_field()
    currency: str = text_field()
    interval: str = text_field()
    interval_count: int = Field(default=1, nullable=False)
    trial_days: int = zero_field()
    stripe_price_id: str | None = text_field(nullable=True)
    active: bool = flag_field(True)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
    vat_code: int | None = Field(default=None, nullable=True)  # YooKassa receipts (migration 0009)
    version: int = Field(
        default=1, sa_type=Integer, nullable=False, sa_column_kwargs={"server_default": text("1")}
    )
    # The tax rate the version's periods are taxed at, copied from tax_rates (0014).
    tax_rate_code: str | None = text_field(nullable=True)
    tax_percent: Decimal | None = Field(default=None, sa_type=Numeric(6, 4), nullable=True)
    tax_inclusive: bool | None = Field(default=None, nullable=True)


class PaymentMethod(SQLModel, table=True):
    __tablename__ = "payment_methods"
    __table_args__ = (
        CheckConstraint(one_of("provider", PROVIDERS), name="provider"),
        UniqueConstraint("provider", "provider_method_id"),
        # At most one live default per user and provider (migration 0010).
        Index(
            "uq_payment_methods_one_default",
            "user_id",
            "provider",
            unique=True,
            postgresql_where=text("is_default AND detached_at IS NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: str = Field(
        sa_type=Text, foreign_key="billing_users.user_id", nullable=False, index=True
    )
    provider: str = text_field()
    provider_method_id: str = text_field()
    details: dict[str, Any] = jsonb_object_field()
    created_at: datetime | None = timestamp_field(server_now=True)
    # The card as the provider describes it (what `billing.payment-method.list` shows).
    brand: str | None = text_field(nullable=True)
    last4: str | None = text_field(nullable=True)
    exp_month: int | None = Field(default=None, nullable=True)
    exp_year: int | None = Field(default=None, nullable=True)
    is_default: bool = flag_field(False)
    detached_at: datetime | None = timestamp_field()  # never charged again once set


class VirtualAccount(SQLModel, table=True):
    """A prepaid balance: one per user and currency, never below zero nor below its holds."""

    __tablename__ = "virtual_accounts"
    __table_args__ = (
        currency_check(),
        CheckConstraint("balance_minor >= 0", name="balance_non_negative"),
        UniqueConstraint("user_id", "currency"),
        # Open holds (migration 0008) never exceed the balance: available >= 0.
        CheckConstraint("held_minor >= 0", name="held_non_negative"),
        CheckConstraint("balance_minor - held_minor >= 0", name="held_within_balance"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: str = Field(sa_type=Text, foreign_key="billing_users.user_id", nullable=False)
    currency: str = text_field()
    balance_minor: int = zero_field(big=True)
    low_balance_alerted: bool = flag_field(False)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
    held_minor: int = zero_field(big=True)  # the open holds' sum


class Transaction(SQLModel, table=True):
    """A movement of money; its state changes are audited in ``transaction_transitions``."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint(one_of("kind", TRANSACTION_KINDS), name="kind"),
        CheckConstraint(one_of("status", TRANSACTION_STATUSES), name="status"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        currency_check(),
        CheckConstraint(one_of("provider", TRANSACTION_PROVIDERS), name="provider"),
        CheckConstraint(
            f"({one_of('status', ('completed', 'refunded'))}) = (completed_at IS NOT NULL)",
            name="completed_at",
        ),
        UniqueConstraint("provider", "provider_ref"),
        Index("ix_transactions_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_transactions_processing",
            "updated_at",
            postgresql_where=text("status = 'processing'"),
        ),
        # The refund reconciler's claim: processing refunds alone (migration 0019).
        Index(
            "ix_transactions_processing_refunds",
            "updated_at",
            postgresql_where=text("status = 'processing' AND kind = 'refund'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: str = Field(sa_type=Text, foreign_key="billing_users.user_id", nullable=False)
    account_id: uuid.UUID | None = Field(
        default=None, foreign_key="virtual_accounts.id", nullable=True, index=True
    )
    kind: str = text_field()
    status: str = text_field()
    amount_minor: int = minor_units_field()
    currency: str = text_field()
    provider: str | None = text_field(nullable=True)
    provider_ref: str | None = text_field(nullable=True)
    failure_code: str | None = text_field(nullable=True)
    failure_message: str | None = text_field(nullable=True)
    description: str | None = text_field(nullable=True)
    reference: str | None = text_field(nullable=True)
    subscription_id: uuid.UUID | None = Field(
        default=None, foreign_key="subscriptions.id", nullable=True, index=True
    )
    invoice_id: uuid.UUID | None = Field(
        default=None, foreign_key="invoices.id", nullable=True, index=True
    )
    # A refund names the payment it gives back; the refunds of a payment never add up
    # to more than it.
    refund_of: uuid.UUID | None = Field(
        default=None, foreign_key="transactions.id", nullable=True, index=True
    )
    # What the provider's own API said when it was asked (object, id, status, amount,
    # currency): the only thing a provider payment or refund completes on.
    provider_confirmation: dict[str, Any] | None = Field(default=None, sa_type=JSONB, nullable=True)
    # SQLModel reserves the attribute name ``metadata``; the column keeps it.
    meta: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    )
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
    completed_at: datetime | None = timestamp_field()


class TransactionTransition(SQLModel, table=True):
    """Audit row for every state change of a transaction (``from_status`` NULL on creation)."""

    __tablename__ = "transaction_transitions"
    __table_args__ = (
        CheckConstraint(
            f"from_status IS NULL OR {one_of('from_status', TRANSACTION_STATUSES)}",
            name="from_status",
        ),
        CheckConstraint(one_of("to_status", TRANSACTION_STATUSES), name="to_status"),
    )

    id: int | None = bigint_identity_pk()
    transaction_id: uuid.UUID = Field(
        foreign_key="transactions.id", ondelete="CASCADE", nullable=False, index=True
    )
    from_status: str | None = text_field(nullable=True)
    to_status: str = text_field()
    reason: str | None = text_field(nullable=True)
    at: datetime | None = timestamp_field(server_now=True)


class ServiceSecret(SQLModel, table=True):
    """Keys only the worker's database user can read (e.g. the sandbox's callback HMAC key)."""

    __tablename__ = "service_secrets"

    name: str = Field(sa_type=Text, primary_key=True)
    secret: str = text_field()
    created_at: datetime | None = timestamp_field(server_now=True)


class IdempotencyRecord(SQLModel, table=True):
    """A processed command (scope, idempotency key) or provider event id, with its reply."""

    __tablename__ = "idempotency_records"
    __table_args__ = (CheckConstraint("char_length(key) BETWEEN 1 AND 255", name="key_length"),)

    scope: str = Field(sa_type=Text, primary_key=True)
    key: str = Field(sa_type=Text, primary_key=True)
    request_hash: str = text_field()
    reply: dict[str, Any] | None = Field(default=None, sa_type=JSONB, nullable=True)
    created_at: datetime | None = timestamp_field(server_now=True, index=True)


INTENT_KINDS = (
    "deposit",
    "yookassa_subscription",
    "yookassa_renewal",
    "stripe_subscription",
    "stripe_cancel",
    "deposit_cancel",
    "refund",
    "payment_method_setup",
    "invoice_card",  # migration 0017: an invoice paid by card
    "plan_change_card",  # migration 0018: a YooKassa change-plan's proration payment
)


class ProviderIntent(SQLModel, table=True):
    """A provider call the worker has committed to make and not yet recorded the result of.

    Written (with the rows it concerns, e.g. a ``created`` transaction) in the first
    transaction of a two-phase command, deleted in the transaction that records the
    provider's answer (with the command's idempotency record). The provider is called in
    between, outside any database transaction, with an idempotency key derived from
    ``id``; the reconciler finishes whatever a crash leaves here.
    """

    __tablename__ = "provider_intents"
    __table_args__ = (
        CheckConstraint(one_of("kind", INTENT_KINDS), name="kind"),
        CheckConstraint(one_of("provider", PROVIDERS), name="provider"),
        UniqueConstraint("scope", "idempotency_key"),
    )

    id: uuid.UUID = Field(primary_key=True)
    kind: str = text_field()
    provider: str = text_field()
    user_id: str = Field(sa_type=Text, foreign_key="billing_users.user_id", nullable=False)
    subscription_id: uuid.UUID | None = Field(
        default=None, foreign_key="subscriptions.id", nullable=True, index=True
    )
    # The command to answer (NULL for the renewal scheduler's charges).
    scope: str | None = text_field(nullable=True)
    idempotency_key: str | None = text_field(nullable=True)
    request_hash: str | None = text_field(nullable=True)
    # What the provider call needs beyond the rows (amount, method, return_url, ...).
    request: dict[str, Any] = jsonb_object_field()
    created_at: datetime | None = timestamp_field(server_now=True)
    # The lease: the reconciler takes intents untouched for longer than its threshold.
    updated_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        nullable=False,
        index=True,
        sa_column_kwargs={"server_default": text("now()")},
    )


class OutboxMessage(SQLModel, table=True):
    """An event written in the same transaction as the state it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
        # Retention deletes published rows oldest first (migration 0005_retention).
        Index(
            "ix_outbox_published",
            "published_at",
            postgresql_where=text("published_at IS NOT NULL"),
        ),
    )

    id: int | None = bigint_identity_pk()
    event_id: uuid.UUID = Field(unique=True, nullable=False)
    exchange: str = text_field()  # '' is the default exchange
    routing_key: str = text_field()
    type: str = text_field()
    payload: dict[str, Any] = Field(sa_type=JSONB, nullable=False)
    headers: dict[str, Any] = jsonb_object_field()
    created_at: datetime | None = timestamp_field(server_now=True)
    published_at: datetime | None = timestamp_field()
    attempts: int = zero_field()
