"""The coupon calls of `BillingClient`: create a coupon (admins only), list the coupons."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from typing import Any

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.coupons import CouponList, CouponOut, ListCoupons, UpsertCoupon


class CouponCalls(RpcClient):
    """`billing.coupon.*`."""

    async def upsert_coupon(
        self,
        *,
        code: str,
        name: str,
        duration: str,
        idempotency_key: str,
        percent_off: str | None = None,
        amount_off: str | None = None,
        currency: str | None = None,
        duration_in_periods: int | None = None,
        active: bool = True,
        stripe_coupon_id: str | None = None,
        timeout: float | None = None,
    ) -> CouponOut:
        """`billing.coupon.upsert` (admins only): create the coupon `code` (exactly one of
        `percent_off` and `amount_off` + `currency`, decimal strings), or change its name
        or active. Errors: `InvalidState` (other terms for an existing code)."""
        fields: dict[str, Any] = {
            "idempotency_key": idempotency_key, "code": code, "name": name,
            "percent_off": percent_off, "amount_off": amount_off, "currency": currency,
            "duration": duration, "duration_in_periods": duration_in_periods,
            "active": active, "stripe_coupon_id": stripe_coupon_id,
        }  # fmt: skip
        command = UpsertCoupon.model_validate(fields)
        return await self.request(names.COUPON_UPSERT, command, CouponOut, timeout=timeout)

    async def list_coupons(self, *, timeout: float | None = None) -> CouponList:
        """`billing.coupon.list`: every coupon, by code."""
        return await self.request(names.COUPON_LIST, ListCoupons(), CouponList, timeout=timeout)
