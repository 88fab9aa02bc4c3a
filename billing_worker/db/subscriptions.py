"""Plans, subscriptions and paid periods: the SQL of the subscription lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from billing_worker.db.errors import translated

LIVE_UNIQUE = "uq_subscriptions_one_live_per_user_plan"


@dataclass(frozen=True, slots=True)
class PlanRow:
    id: UUID
    code: str
    name: str
    price_minor: int
    currency: str
    interval: str
    interval_count: int
    trial_days: int
    stripe_price_id: str | None
    active: bool
    vat_code: int | None = None  # YooKassa receipts: the vat_code of the plan's charges


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    id: UUID
    user_id: str
    plan_id: UUID
    status: str
    payment_source: str
    payment_method_id: UUID | None
    provider_subscription_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    billing_anchor: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    cancel_reason: str | None
    paid_periods: int
    dunning_attempts: int
    next_attempt_at: datetime | None
    plan: PlanRow
    provider_synced_at: datetime | None = None  # when the Stripe state applied was read
    pause_at_period_end: bool = False  # pause when the paid period ends (balance, YooKassa)
    paused_until: datetime | None = None  # a pause ends by itself then
    anchor_period: int = 0  # the period that starts at billing_anchor (re-anchored: unpause)
    restarts: int = 0  # unpauses so far (part of the charge ids)
    quantity: int = 1  # seats: a period costs the plan's price times this


_PLAN_COLUMNS = [f.name for f in fields(PlanRow)]
_SUB_COLUMNS = [f.name for f in fields(SubscriptionRow) if f.name != "plan"]
# Columns a caller may change through `update` (never ids or the plan).
_UPDATABLE = frozenset(_SUB_COLUMNS) - {"id", "user_id", "plan_id", "payment_source"}

_SUB_LIST = ", ".join(f"s.{c}" for c in _SUB_COLUMNS)
_PLAN_LIST = ", ".join(f"p.{c} AS plan_{c}" for c in _PLAN_COLUMNS)
# Only constant column names are formatted into the SQL.
_SELECT_SUBSCRIPTION = (
    f"SELECT {_SUB_LIST}, {_PLAN_LIST} FROM subscriptions s JOIN plans p ON p.id = s.plan_id"  # noqa: S608
)

# Paused subscriptions are due only when their pause ends by itself (`paused_until`).
_DUE = f"""
{_SELECT_SUBSCRIPTION}
WHERE s.payment_source IN ('balance', 'yookassa')
  AND (
        (s.status IN ('active', 'trialing') AND s.current_period_end <= $1)
     OR (s.status = 'past_due' AND s.next_attempt_at <= $1)
     OR (s.status = 'paused' AND s.paused_until <= $1)
  )
  AND s.id <> ALL($2::uuid[])  -- skipped this round after an error
  AND NOT EXISTS (  -- a provider charge is still in flight: its callback decides
        SELECT 1 FROM transactions t
        WHERE t.subscription_id = s.id AND t.status IN ('created', 'processing')
  )
ORDER BY s.current_period_end
LIMIT 1
FOR UPDATE OF s SKIP LOCKED
"""  # noqa: S608 - constant column lists only


def _plan(record: Any, prefix: str = "") -> PlanRow:
    return PlanRow(**{c: record[prefix + c] for c in _PLAN_COLUMNS})


def _subscription(record: Any) -> SubscriptionRow:
    values = {c: record[c] for c in _SUB_COLUMNS}
    return SubscriptionRow(**values, plan=_plan(record, "plan_"))


class SqlPlans:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def upsert(self, plan: PlanRow) -> PlanRow:
        record = await self._db.fetchrow(
            f"""
            INSERT INTO plans (id, code, name, price_minor, currency, interval, interval_count,
                               trial_days, stripe_price_id, active, vat_code)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (code) DO UPDATE SET
                name = excluded.name, price_minor = excluded.price_minor,
                currency = excluded.currency, interval = excluded.interval,
                interval_count = excluded.interval_count, trial_days = excluded.trial_days,
                stripe_price_id = excluded.stripe_price_id, active = excluded.active,
                vat_code = excluded.vat_code, updated_at = now()
            RETURNING {", ".join(_PLAN_COLUMNS)}
            """,  # noqa: S608
            *(getattr(plan, c) for c in _PLAN_COLUMNS),
        )
        return _plan(record)

    async def by_code(self, code: str) -> PlanRow | None:
        record = await self._db.fetchrow(
            f"SELECT {', '.join(_PLAN_COLUMNS)} FROM plans WHERE code = $1",  # noqa: S608
            code,
        )
        return None if record is None else _plan(record)

    async def listing(self, active_only: bool) -> list[PlanRow]:
        records = await self._db.fetch(
            f"SELECT {', '.join(_PLAN_COLUMNS)} FROM plans "  # noqa: S608
            "WHERE active OR NOT $1 ORDER BY code",
            active_only,
        )
        return [_plan(record) for record in records]


class SqlSubscriptions:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def ensure_user(self, user_id: str, email: str | None) -> None:
        await self._db.execute(
            "INSERT INTO billing_users (id, user_id, email) VALUES (gen_random_uuid(), $1, $2) "
            "ON CONFLICT (user_id) DO UPDATE SET email = coalesce(excluded.email, "
            "billing_users.email)",
            user_id,
            email,
        )

    async def insert(self, row: SubscriptionRow) -> None:
        """Raises DuplicateKey (LIVE_UNIQUE) when the user already has this plan."""
        columns = [c for c in _SUB_COLUMNS]
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        with translated():
            await self._db.execute(
                f"INSERT INTO subscriptions ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608
                *(getattr(row, c) for c in columns),
            )

    async def get(self, subscription_id: UUID, *, lock: bool = False) -> SubscriptionRow | None:
        sql = f"{_SELECT_SUBSCRIPTION} WHERE s.id = $1" + (" FOR UPDATE OF s" if lock else "")
        record = await self._db.fetchrow(sql, subscription_id)
        return None if record is None else _subscription(record)

    async def by_provider_ref(self, ref: str, *, lock: bool = False) -> SubscriptionRow | None:
        sql = f"{_SELECT_SUBSCRIPTION} WHERE s.provider_subscription_id = $1" + (
            " FOR UPDATE OF s" if lock else ""
        )
        record = await self._db.fetchrow(sql, ref)
        return None if record is None else _subscription(record)

    async def of_user(self, user_id: str) -> list[SubscriptionRow]:
        records = await self._db.fetch(
            f"{_SELECT_SUBSCRIPTION} WHERE s.user_id = $1 ORDER BY s.created_at DESC, s.id",
            user_id,
        )
        return [_subscription(record) for record in records]

    async def claim_due(self, now: datetime, skip: Sequence[UUID] = ()) -> SubscriptionRow | None:
        """Lock one subscription due for renewal that no other scheduler holds."""
        record = await self._db.fetchrow(_DUE, now, list(skip))
        return None if record is None else _subscription(record)

    async def update(self, subscription_id: UUID, **changes: Any) -> None:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
        await self._db.execute(
            f"UPDATE subscriptions SET {assignments}, updated_at = now() WHERE id = $1",  # noqa: S608
            subscription_id,
            *changes.values(),
        )

    async def discard_incomplete(self, subscription_id: UUID) -> None:
        """Remove a subscription whose first provider call was refused (nothing exists at
        the provider): a refused command leaves nothing behind."""
        await self._db.execute(
            "DELETE FROM subscriptions WHERE id = $1 AND status = 'incomplete' "
            "AND provider_subscription_id IS NULL AND paid_periods = 0",
            subscription_id,
        )

    async def record_charge(
        self,
        subscription_id: UUID,
        period_index: int,
        start: datetime,
        end: datetime,
        transaction_id: UUID | None,
    ) -> bool:
        """Mark a period paid; False if it was paid before (the database refuses twice)."""
        inserted = await self._db.fetchval(
            "INSERT INTO subscription_charges "
            "(subscription_id, period_index, period_start, period_end, transaction_id) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subscription_id, period_index) DO NOTHING "
            "RETURNING true",
            subscription_id,
            period_index,
            start,
            end,
            transaction_id,
        )
        return bool(inserted)

    async def payment_method_ref(self, method_id: UUID) -> str | None:
        value = await self._db.fetchval(
            # a detached method is never charged again
            "SELECT provider_method_id FROM payment_methods WHERE id = $1 AND detached_at IS NULL",
            method_id,
        )
        return None if value is None else str(value)

    async def payment_method_id(self, provider: str, ref: str) -> UUID | None:
        value = await self._db.fetchval(
            "SELECT id FROM payment_methods WHERE provider = $1 AND provider_method_id = $2",
            provider,
            ref,
        )
        return value  # type: ignore[no-any-return]
