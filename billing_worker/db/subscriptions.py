"""Plans, subscriptions and paid periods: the SQL of the subscription lifecycle."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from billing_worker.db.errors import translated
from billing_worker.domain.discounts import Coupon, Duration, Redemption

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
    version: int = 1  # one row per version of a code; the current version is the highest
    # The tax rate its periods are taxed at, copied when the version was made (0014).
    tax_rate_code: str | None = None
    tax_percent: Decimal | None = None
    tax_inclusive: bool | None = None


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
    # The period index billing_anchor is period 0 of (re-anchored by a migration to another
    # interval or by an unpause).
    anchor_offset: int = 0
    pause_at_period_end: bool = False  # pause when the paid period ends (balance, YooKassa)
    paused_until: datetime | None = None  # a pause ends by itself then
    restarts: int = 0  # unpauses so far (part of the charge ids)
    quantity: int = 1  # seats: a period costs the plan's price times this
    # Coupons (migration 0016): the coupon it redeemed and the charged periods it has
    # discounted (joined from coupon_redemptions; None: no coupon).
    redemption: Redemption | None = None
    # A change the renewal of the paid period applies (change-plan `period_end`, 0015):
    # the version row and the seats; code and version are read with it (a join).
    scheduled_plan_id: UUID | None = None
    scheduled_quantity: int | None = None
    scheduled_plan_code: str | None = None
    scheduled_plan_version: int | None = None
    # A `now` + `prorate` change waiting for its YooKassa payment (0018): applied when the
    # payment is confirmed and its proration invoice paid; code and version joined.
    pending_plan_id: UUID | None = None
    pending_quantity: int | None = None
    pending_invoice_id: UUID | None = None
    pending_plan_code: str | None = None
    pending_plan_version: int | None = None


_PLAN_COLUMNS = [f.name for f in fields(PlanRow)]
_JOINED = frozenset({"plan", "redemption", "scheduled_plan_code", "scheduled_plan_version",
                     "pending_plan_code", "pending_plan_version"})  # fmt: skip
_SUB_COLUMNS = [f.name for f in fields(SubscriptionRow) if f.name not in _JOINED]
_COUPON_COLUMNS = (
    "code", "name", "percent_off", "amount_off_minor", "currency", "duration",
    "duration_in_periods", "active", "stripe_coupon_id",
)  # fmt: skip
# Columns a caller may change through `update` (never ids or the plan: `move_plan`).
_UPDATABLE = frozenset(_SUB_COLUMNS) - {"id", "user_id", "plan_id", "payment_source"}
_LIVE = "s.status IN ('incomplete', 'trialing', 'active', 'past_due', 'paused')"

_SUB_LIST = ", ".join(f"s.{c}" for c in _SUB_COLUMNS)
_PLAN_LIST = ", ".join(f"p.{c} AS plan_{c}" for c in _PLAN_COLUMNS)
# Only constant column names are formatted into the SQL.
_COUPON_LIST = ", ".join(f"c.{c} AS coupon_{c}" for c in _COUPON_COLUMNS)
_SELECT_SUBSCRIPTION = (  # fmt: skip
    f"SELECT {_SUB_LIST}, {_PLAN_LIST}, {_COUPON_LIST}, "  # noqa: S608
    "r.periods_used AS coupon_periods_used, "
    "sp.code AS scheduled_plan_code, sp.version AS scheduled_plan_version, "
    "pp.code AS pending_plan_code, pp.version AS pending_plan_version "
    "FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
    "LEFT JOIN coupon_redemptions r ON r.subscription_id = s.id "
    "LEFT JOIN coupons c ON c.code = r.coupon_code "
    "LEFT JOIN plans sp ON sp.id = s.scheduled_plan_id "
    "LEFT JOIN plans pp ON pp.id = s.pending_plan_id"
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


def _redemption(record: Any) -> Redemption | None:
    if record["coupon_code"] is None:
        return None
    coupon = Coupon(**{c: record[f"coupon_{c}"] for c in _COUPON_COLUMNS})
    coupon = dataclasses.replace(coupon, duration=Duration(coupon.duration))
    return Redemption(coupon, record["coupon_periods_used"])


def _subscription(record: Any) -> SubscriptionRow:
    values = {c: record[c] for c in _SUB_COLUMNS}
    return SubscriptionRow(
        **values, plan=_plan(record, "plan_"), redemption=_redemption(record),
        scheduled_plan_code=record["scheduled_plan_code"],
        scheduled_plan_version=record["scheduled_plan_version"],
        pending_plan_code=record["pending_plan_code"],
        pending_plan_version=record["pending_plan_version"],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A subscription moved by `billing.subscription.change-plan` (`SqlSubscriptions.
    change_plan`): onto `to` x `quantity` from period `from_period_index` on, that period
    starting at `anchor` counted as period `anchor_offset`."""

    sub: SubscriptionRow
    to: PlanRow
    quantity: int
    anchor: datetime | None  # None: Stripe runs the subscription's periods
    anchor_offset: int
    from_period_index: int
    effective_at: datetime
    proration_minor: int | None = None


_PLAN_LOCK = 0x706C616E  # "plan": the advisory lock class of plan codes
_PLAN_SELECT = f"SELECT {', '.join(_PLAN_COLUMNS)} FROM plans"  # noqa: S608


class SqlPlans:
    """Plans by code, one row per version; the current version of a code is its highest."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def upsert(self, plan: PlanRow) -> PlanRow:
        """Update the current version of `plan.code` in place (keeping its id and
        version), or insert `plan` as the code's first version."""
        current = await self.by_code(plan.code, lock=True)
        if current is None:
            return await self.add_version(plan)
        record = await self._db.fetchrow(
            f"""
            UPDATE plans SET name = $2, price_minor = $3, currency = $4, interval = $5,
                interval_count = $6, trial_days = $7, stripe_price_id = $8, active = $9,
                vat_code = $10, updated_at = now()
            WHERE id = $1
            RETURNING {", ".join(_PLAN_COLUMNS)}
            """,  # noqa: S608
            current.id, plan.name, plan.price_minor, plan.currency, plan.interval,
            plan.interval_count, plan.trial_days, plan.stripe_price_id, plan.active,
            plan.vat_code,
        )  # fmt: skip
        return _plan(record)

    async def add_version(self, plan: PlanRow) -> PlanRow:
        """Insert `plan` (its `version` chosen by the caller); a version another
        transaction took first is a DuplicateKey (the service retries the command)."""
        placeholders = ", ".join(f"${i}" for i in range(1, len(_PLAN_COLUMNS) + 1))
        with translated():
            record = await self._db.fetchrow(
                f"INSERT INTO plans ({', '.join(_PLAN_COLUMNS)}) VALUES ({placeholders}) "  # noqa: S608
                f"RETURNING {', '.join(_PLAN_COLUMNS)}",
                *(getattr(plan, c) for c in _PLAN_COLUMNS),
            )
        return _plan(record)

    async def by_code(self, code: str, *, lock: bool = False) -> PlanRow | None:
        """The current version. With `lock`, writers of this code queue up until the
        transaction ends (a transaction-scoped advisory lock on the code, taken before
        the read: a row lock alone would hand a waiter the version that was current
        when it started waiting, not the one a concurrent upsert just added)."""
        if lock:
            await self._db.execute(
                "SELECT pg_advisory_xact_lock($1::int, hashtext($2))", _PLAN_LOCK, code
            )
        record = await self._db.fetchrow(
            f"{_PLAN_SELECT} WHERE code = $1 ORDER BY version DESC LIMIT 1"
            + (" FOR UPDATE" if lock else ""),
            code,
        )
        return None if record is None else _plan(record)

    async def version(self, code: str, version: int) -> PlanRow | None:
        record = await self._db.fetchrow(
            f"{_PLAN_SELECT} WHERE code = $1 AND version = $2", code, version
        )
        return None if record is None else _plan(record)

    async def versions(self, code: str) -> list[PlanRow]:
        """Every version of the code, oldest first."""
        records = await self._db.fetch(f"{_PLAN_SELECT} WHERE code = $1 ORDER BY version", code)
        return [_plan(record) for record in records]

    async def listing(self, active_only: bool) -> list[PlanRow]:
        """The current version of each code."""
        records = await self._db.fetch(
            f"SELECT * FROM (SELECT DISTINCT ON (code) {', '.join(_PLAN_COLUMNS)} FROM plans "  # noqa: S608
            "ORDER BY code, version DESC) current WHERE active OR NOT $1 ORDER BY code",
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
        """Raises DuplicateKey (LIVE_UNIQUE) when the user already has a live subscription
        to this plan code, on any of its versions."""
        columns = [*_SUB_COLUMNS, "plan_code"]
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        with translated():
            await self._db.execute(
                f"INSERT INTO subscriptions ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608
                *(getattr(row, c) for c in _SUB_COLUMNS),
                row.plan.code,
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

    async def live_on(self, plan_ids: Sequence[UUID]) -> list[SubscriptionRow]:
        """The live subscriptions on these plan version rows, locked (in id order)."""
        records = await self._db.fetch(
            f"{_SELECT_SUBSCRIPTION} WHERE s.plan_id = ANY($1::uuid[]) AND {_LIVE} "
            "ORDER BY s.id FOR UPDATE OF s",
            list(plan_ids),
        )
        return [_subscription(record) for record in records]

    async def charged_plan(self, subscription_id: UUID, period_index: int) -> PlanRow | None:
        """The plan version row (its price and tax copy) period `period_index` was paid
        on; None when it was not (or before versions were recorded with the charge)."""
        record = await self._db.fetchrow(
            "SELECT p.* FROM subscription_charges c JOIN plans p ON p.id = c.plan_id "
            "WHERE c.subscription_id = $1 AND c.period_index = $2",
            subscription_id, period_index,
        )  # fmt: skip
        return None if record is None else _plan(record)

    async def charging(self, subscription_ids: Sequence[UUID]) -> set[UUID]:
        """Those of the subscriptions with a provider call or a charge still open."""
        records = await self._db.fetch(
            "SELECT subscription_id FROM provider_intents WHERE subscription_id = ANY($1::uuid[]) "
            "UNION SELECT subscription_id FROM transactions "
            "WHERE subscription_id = ANY($1::uuid[]) AND status IN ('created', 'processing')",
            list(subscription_ids),
        )
        return {record["subscription_id"] for record in records}

    async def move_plan(
        self,
        sub: SubscriptionRow,
        to: PlanRow,
        anchor: datetime,
        anchor_offset: int,
        effective_at: datetime,
    ) -> None:
        """Put the subscription on the version `to` from its next period (`paid_periods`)
        on, period `anchor_offset` starting at `anchor`, and record the move."""
        await self._db.execute(
            "UPDATE subscriptions SET plan_id = $2, billing_anchor = $3, anchor_offset = $4, "
            "updated_at = now() WHERE id = $1",
            sub.id, to.id, anchor, anchor_offset,
        )  # fmt: skip
        await self._db.execute(
            "INSERT INTO subscription_plan_changes (subscription_id, from_plan_id, to_plan_id, "
            "from_period_index, effective_at) VALUES ($1, $2, $3, $4, $5)",
            sub.id, sub.plan_id, to.id, sub.paid_periods, effective_at,
        )  # fmt: skip

    async def change_plan(self, change: PlanChange) -> None:
        """Put the subscription on `change.to` with `change.quantity` seats from period
        `change.from_period_index` on (its code follows: a live subscription of the user to
        that code is a DuplicateKey on LIVE_UNIQUE), drop any scheduled change, and record
        the change (kind `change_plan`)."""
        sub = change.sub
        with translated():
            await self._db.execute(
                "UPDATE subscriptions SET plan_id = $2, plan_code = $3, quantity = $4, "
                "billing_anchor = $5, anchor_offset = $6, scheduled_plan_id = NULL, "
                "scheduled_quantity = NULL, updated_at = now() WHERE id = $1",
                sub.id, change.to.id, change.to.code, change.quantity, change.anchor,
                change.anchor_offset,
            )  # fmt: skip
        await self._db.execute(
            "INSERT INTO subscription_plan_changes (subscription_id, from_plan_id, to_plan_id, "
            "from_period_index, effective_at, kind, from_quantity, to_quantity, "
            "proration_minor) VALUES ($1, $2, $3, $4, $5, 'change_plan', $6, $7, $8)",
            sub.id, sub.plan_id, change.to.id, change.from_period_index, change.effective_at,
            sub.quantity, change.quantity, change.proration_minor,
        )  # fmt: skip

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
        plan_id: UUID | None = None,
    ) -> bool:
        """Mark a period paid (on the plan version row `plan_id`); False if it was paid
        before (the database refuses twice)."""
        inserted = await self._db.fetchval(
            "INSERT INTO subscription_charges "
            "(subscription_id, period_index, period_start, period_end, transaction_id, plan_id) "
            "VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (subscription_id, period_index) DO NOTHING RETURNING true",
            subscription_id,
            period_index,
            start,
            end,
            transaction_id,
            plan_id,
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
