"""Column helpers and conventions shared by every table module.

See :mod:`billing_worker.db.tables` for the conventions themselves.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# CHECK names are short and get the table prefixed: name="balance_non_negative" on
# virtual_accounts is ck_virtual_accounts_balance_non_negative. Multi-column and partial
# indexes carry their full name explicitly; the other names below derive from columns.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(column_0_label)s",
}
# Mutate the one MetaData that SQLModel's registry and every table share (replacing
# the object would leave the registry pointing at the old one).
SQLModel.metadata.naming_convention = NAMING_CONVENTION

PROVIDERS = ("stripe", "yookassa", "sandbox")
TRANSACTION_KINDS = (
    "deposit",
    "withdrawal",
    "subscription_charge",
    "invoice_payment",
    "refund",
    "credit",
)
TRANSACTION_STATUSES = ("created", "processing", "completed", "failed", "canceled", "refunded")
TRANSACTION_PROVIDERS = (*PROVIDERS, "balance")


def one_of(column: str, values: Iterable[str]) -> str:
    """SQL for ``column IN ('a', 'b', ...)``; the values are our own constants."""
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"


def currency_check() -> CheckConstraint:
    return CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217")


def text_field(*, nullable: bool = False, unique: bool = False, index: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_type=Text,
        nullable=nullable,
        unique=unique,
        index=index,
    )


def minor_units_field() -> Any:
    return Field(sa_type=BigInteger, nullable=False)


def timestamp_field(*, server_now: bool = False, index: bool = False) -> Any:
    """``timestamptz``; ``server_now`` makes it NOT NULL with a ``now()`` default."""
    if server_now:
        return Field(
            default=None,
            sa_type=DateTime(timezone=True),
            nullable=False,
            index=index,
            sa_column_kwargs={"server_default": text("now()")},
        )
    return Field(default=None, sa_type=DateTime(timezone=True), nullable=True, index=index)


def updated_at_field() -> Any:
    return Field(
        default=None,
        sa_type=DateTime(timezone=True),
        nullable=False,
        sa_column_kwargs={"server_default": text("now()"), "onupdate": text("now()")},
    )


def jsonb_object_field() -> Any:
    """A NOT NULL ``jsonb`` object defaulting to ``{}``."""
    return Field(
        default_factory=dict,
        sa_type=JSONB,
        nullable=False,
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )


def flag_field(default: bool) -> Any:
    """A NOT NULL boolean with the same default in Python and in the database."""
    return Field(
        default=default,
        nullable=False,
        sa_column_kwargs={"server_default": text("true" if default else "false")},
    )


def zero_field(*, big: bool = False) -> Any:
    """A NOT NULL counter (``INTEGER``, or ``BIGINT`` for money) starting at 0."""
    return Field(
        default=0,
        sa_type=BigInteger if big else Integer,
        nullable=False,
        sa_column_kwargs={"server_default": text("0")},
    )


def bigint_identity_pk() -> Any:
    return Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
