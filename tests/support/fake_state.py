"""The in-memory 'database' of the fake unit of work: plain tables, and what the SQL's
constraints would refuse (raised as the asyncpg errors the SQL implementation raises)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from billing_worker.db.idempotency import StoredReply
from billing_worker.db.intents import Intent
from billing_worker.db.invoices import InvoiceRow
from billing_worker.db.payment_methods import Card
from billing_worker.db.subscriptions import PlanChange, PlanRow, SubscriptionRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.discounts import Coupon
from billing_worker.domain.holds import HoldRow
from billing_worker.domain.taxes import TaxRate
from billing_worker.domain.transactions import Transition

CUSTOMER_PROVIDERS = ("stripe", "yookassa")  # the providers billing_users has a column for
LIVE_STATUSES = frozenset({"incomplete", "trialing", "active", "past_due", "paused"})


def unique_violation(constraint: str) -> asyncpg.UniqueViolationError:
    """What asyncpg raises when PostgreSQL refuses a duplicate under `constraint`."""
    error: asyncpg.UniqueViolationError = asyncpg.UniqueViolationError.new(
        {
            "C": "23505",
            "M": f'duplicate key value violates unique constraint "{constraint}"',
            "n": constraint,
        }
    )
    return error


def check_violation(table: str, constraint: str, holds: bool) -> None:
    """What PostgreSQL raises when a row breaks a CHECK constraint of its table."""
    if not holds:
        raise asyncpg.CheckViolationError.new(
            {
                "C": "23514",
                "M": f'row for "{table}" violates check constraint "{constraint}"',
                "n": f"ck_{table}_{constraint}",
            }
        )


@dataclass
class UserRow:
    email: str | None = None
    customers: dict[str, str] = field(default_factory=dict)  # provider -> customer id


@dataclass
class AccountRow:
    id: UUID
    balance_minor: int = 0
    low_alerted: bool = False
    held_minor: int = 0  # the open holds' sum (CHECK 0 <= held_minor <= balance_minor)


@dataclass(frozen=True)
class MethodRow:
    id: UUID
    user_id: str
    # the columns of migration 0011 (tests/support/fake_methods.py)
    card: Card = field(default_factory=Card)
    is_default: bool = False
    created_at: datetime | None = None
    detached_at: datetime | None = None


@dataclass
class FakeState:
    """Every table the handlers reach, keyed as the SQL's unique constraints are."""

    users: dict[str, UserRow] = field(default_factory=dict)
    accounts: dict[tuple[str, str], AccountRow] = field(default_factory=dict)  # (user, currency)
    transactions: dict[UUID, TransactionRow] = field(default_factory=dict)
    trails: dict[UUID, list[Transition]] = field(default_factory=dict)
    metadata: dict[UUID, str] = field(default_factory=dict)
    methods: dict[tuple[str, str], MethodRow] = field(default_factory=dict)  # (provider, ref)
    plans: dict[str, PlanRow] = field(default_factory=dict)  # by code: the current version
    plan_rows: dict[UUID, PlanRow] = field(default_factory=dict)  # every version, by id
    # billing.plan.migrate's moves, in order: (subscription, from plan, to plan, from period)
    plan_changes: dict[int, tuple[UUID, UUID, UUID, int]] = field(default_factory=dict)
    # billing.subscription.change-plan's changes, in order (what the SQL records of them)
    plan_switches: dict[int, PlanChange] = field(default_factory=dict)
    charge_plans: dict[tuple[UUID, int], UUID | None] = field(default_factory=dict)
    subscriptions: dict[UUID, SubscriptionRow] = field(default_factory=dict)
    subscription_order: dict[UUID, int] = field(default_factory=dict)  # created_at: the tx
    charges: dict[tuple[UUID, int], UUID | None] = field(default_factory=dict)
    invoices: dict[UUID, InvoiceRow] = field(default_factory=dict)
    numbers: dict[int, int] = field(default_factory=dict)  # year -> last invoice number
    tax_rates: dict[str, TaxRate] = field(default_factory=dict)  # by code
    coupons: dict[str, Coupon] = field(default_factory=dict)  # by code
    redemptions: dict[UUID, tuple[str, int]] = field(default_factory=dict)  # code, used
    records: dict[tuple[str, str], StoredReply] = field(default_factory=dict)
    intents: dict[UUID, Intent] = field(default_factory=dict)
    holds: dict[UUID, HoldRow] = field(default_factory=dict)
    hold_trails: dict[UUID, list[tuple[str | None, str, str | None]]] = field(default_factory=dict)
    transaction_seq: int = 0  # which transaction is running (PostgreSQL's now() in it)

    def ensure_user(self, user_id: str) -> UserRow:
        return self.users.setdefault(user_id, UserRow())

    def refer_to_user(self, user_id: str, table: str) -> None:
        """The foreign key to billing_users every user's row has."""
        if user_id not in self.users:
            raise asyncpg.ForeignKeyViolationError.new(
                {
                    "C": "23503",
                    "M": f"{table}: no billing user {user_id!r}",
                    "n": f"{table}_user_id_fkey",
                }
            )

    def plan_by_id(self, plan_id: UUID) -> PlanRow:
        current = (plan for plan in self.plans.values() if plan.id == plan_id)
        return next(current, None) or self.plan_rows[plan_id]

    def snapshot(self) -> dict[str, Any]:
        """Everything, copied deeply enough that a rollback can put it back."""
        return {
            name: (
                {key: _copy(value) for key, value in table.items()}
                if isinstance(table, dict)
                else table
            )
            for name, table in vars(self).items()
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        for name, table in snapshot.items():
            setattr(self, name, table)


def _copy(value: Any) -> Any:
    """Rows are frozen dataclasses (shared safely); mutable rows and lists are copied."""
    if isinstance(value, UserRow):
        return UserRow(value.email, dict(value.customers))
    if isinstance(value, AccountRow):
        return AccountRow(value.id, value.balance_minor, value.low_alerted, value.held_minor)
    if isinstance(value, list):
        return list(value)
    return value
