"""In-memory coupons and redemptions for the fake unit of work (the SQL is `db/coupons.py`)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from uuid import UUID

from billing_worker.domain.discounts import Coupon, Redemption
from support.fake_wallet import State


class FakeCoupons:
    def __init__(self, state: State) -> None:
        self._state = state

    async def by_code(self, code: str, *, lock: bool = False) -> Coupon | None:
        return self._state().coupons.get(code)

    async def upsert(self, coupon: Coupon) -> Coupon:
        coupons = self._state().coupons
        existing = coupons.get(coupon.code)
        if existing is None:  # NUMERIC(7, 4) keeps four decimal places, as PostgreSQL does
            percent = None if coupon.percent_off is None else coupon.percent_off.quantize(_FOUR)
            stored = dataclasses.replace(coupon, percent_off=percent)
        else:  # only the name and active change, as the SQL's ON CONFLICT does
            stored = dataclasses.replace(existing, name=coupon.name, active=coupon.active)
        coupons[coupon.code] = stored
        return stored

    async def listing(self) -> list[Coupon]:
        coupons = self._state().coupons
        return [coupons[code] for code in sorted(coupons)]

    async def redeem(self, subscription_id: UUID, code: str) -> None:
        self._state().redemptions[subscription_id] = (code, 0)

    async def redemption(self, subscription_id: UUID) -> Redemption | None:
        state = self._state()
        found = state.redemptions.get(subscription_id)
        return None if found is None else Redemption(state.coupons[found[0]], found[1])

    async def use_period(self, subscription_id: UUID) -> None:
        state = self._state()
        code, used = state.redemptions[subscription_id]
        state.redemptions[subscription_id] = (code, used + 1)


_FOUR = Decimal("0.0001")
