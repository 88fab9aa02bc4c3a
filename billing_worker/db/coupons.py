"""The coupons' SQL: one row per code (terms never change), and a subscription's
redemption, written under the subscription's row lock."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg

from billing_worker.domain.discounts import Coupon, Duration, Redemption

_COLUMNS = (
    "code, name, percent_off, amount_off_minor, currency, duration, duration_in_periods, "
    "active, stripe_coupon_id"
)
# A new code is inserted; an existing one gets only its name and active changed (the
# handler has refused other terms under the row lock taken by `by_code(lock=True)`).
_UPSERT = f"""
INSERT INTO coupons (id, {_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (code) DO UPDATE
SET name = excluded.name, active = excluded.active, updated_at = now()
RETURNING {_COLUMNS}
"""  # noqa: S608 - only constant column names are formatted in
_REDEEM = """
INSERT INTO coupon_redemptions (subscription_id, coupon_code) VALUES ($1, $2)
ON CONFLICT (subscription_id) DO UPDATE SET coupon_code = excluded.coupon_code, periods_used = 0
"""
_REDEMPTION = """
SELECT r.periods_used, {columns} FROM coupon_redemptions r JOIN coupons c ON c.code = r.coupon_code
WHERE r.subscription_id = $1
"""
_USE = "UPDATE coupon_redemptions SET periods_used = periods_used + 1 WHERE subscription_id = $1"


def _coupon(record: Any) -> Coupon:
    return Coupon(
        record["code"], record["name"], record["percent_off"], record["amount_off_minor"],
        record["currency"], Duration(record["duration"]), record["duration_in_periods"],
        record["active"], record["stripe_coupon_id"],
    )  # fmt: skip


class SqlCoupons:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def by_code(self, code: str, *, lock: bool = False) -> Coupon | None:
        sql = f"SELECT {_COLUMNS} FROM coupons WHERE code = $1"  # noqa: S608
        record = await self._db.fetchrow(sql + (" FOR UPDATE" if lock else ""), code)
        return None if record is None else _coupon(record)

    async def upsert(self, coupon: Coupon) -> Coupon:
        """Create the coupon, or change the name and active of the one with its code."""
        record = await self._db.fetchrow(
            _UPSERT, uuid4(), coupon.code, coupon.name, coupon.percent_off,
            coupon.amount_off_minor, coupon.currency, coupon.duration.value,
            coupon.duration_in_periods, coupon.active, coupon.stripe_coupon_id,
        )  # fmt: skip
        return _coupon(record)

    async def listing(self) -> list[Coupon]:
        records = await self._db.fetch(f"SELECT {_COLUMNS} FROM coupons ORDER BY code")  # noqa: S608
        return [_coupon(record) for record in records]

    async def redeem(self, subscription_id: UUID, code: str) -> None:
        """The subscription's redemption of `code`, from its first charged period."""
        await self._db.execute(_REDEEM, subscription_id, code)

    async def redemption(self, subscription_id: UUID) -> Redemption | None:
        columns = ", ".join(f"c.{name}" for name in _COLUMNS.split(", "))
        record = await self._db.fetchrow(_REDEMPTION.format(columns=columns), subscription_id)
        return None if record is None else Redemption(_coupon(record), record["periods_used"])

    async def use_period(self, subscription_id: UUID) -> None:
        """One more charged period discounted (the caller holds the subscription's lock)."""
        await self._db.execute(_USE, subscription_id)
