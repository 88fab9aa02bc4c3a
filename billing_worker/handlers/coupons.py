"""Coupons: `billing.coupon.upsert` (admins only: access.PRIVILEGED) and `.list`; the
coupon a new invoice or subscription names; a subscription's redemption.

`redeem(uow, sub, code)` is what a command that attaches a coupon to an existing
subscription calls (subscription.create does, under the subscription's row lock)."""

from __future__ import annotations

from decimal import Decimal

from billing_contracts.coupons import CouponList, CouponOut, ListCoupons, UpsertCoupon
from billing_contracts.money import parse_minor
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.discounts import Coupon, Duration, Redemption
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput, InvalidState, NotFound
from billing_worker.domain.money import to_wire
from billing_worker.domain.taxes import format_percent
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork


def coupon_out(coupon: Coupon) -> CouponOut:
    off, currency = coupon.amount_off_minor, coupon.currency
    return CouponOut(
        code=coupon.code,
        name=coupon.name,
        percent_off=None if coupon.percent_off is None else format_percent(coupon.percent_off),
        amount_off=None if off is None or currency is None else to_wire(off, currency),
        duration=coupon.duration.value,
        duration_in_periods=coupon.duration_in_periods,
        active=coupon.active,
        stripe_coupon_id=coupon.stripe_coupon_id,
    )


def _coupon(command: UpsertCoupon) -> Coupon:
    amount_off = None
    if command.amount_off is not None and command.currency is not None:
        try:
            amount_off = parse_minor(command.amount_off, command.currency)
        except ValueError as bad:
            raise InvalidInput(str(bad), field="amount_off") from None
    return Coupon(
        code=command.code, name=command.name,
        percent_off=None if command.percent_off is None else Decimal(command.percent_off),
        amount_off_minor=amount_off, currency=command.currency,
        duration=Duration(command.duration), duration_in_periods=command.duration_in_periods,
        active=command.active, stripe_coupon_id=command.stripe_coupon_id,
    )  # fmt: skip


async def upsert_coupon(command: UpsertCoupon, uow: UnitOfWork, deps: Deps) -> CouponOut:
    """Create the coupon, or change its name / active; other terms are `invalid_state`."""
    coupon = _coupon(command)
    existing = await uow.coupons.by_code(command.code, lock=True)
    if existing is None or existing.terms() == coupon.terms():
        # A concurrent first creation of the code may have won the insert: its terms are
        # what the upsert returns, and other terms than ours are refused the same way.
        stored = await uow.coupons.upsert(coupon)
        if stored.terms() == coupon.terms():
            return coupon_out(stored)
    raise InvalidState(
        f"coupon {command.code} exists with other terms: they never change, use a new code",
        coupon=command.code,
    )


async def list_coupons(query: ListCoupons, uow: UnitOfWork, deps: Deps) -> CouponList:
    return CouponList(coupons=[coupon_out(coupon) for coupon in await uow.coupons.listing()])


async def usable(uow: UnitOfWork, code: str, currency: str) -> Coupon:
    """The coupon a new invoice or subscription names: unknown `not_found`, inactive
    `invalid_state`, an amount off in another currency `currency_mismatch`."""
    coupon = await uow.coupons.by_code(code)
    if coupon is None:
        raise NotFound(f"no coupon {code!r}", coupon=code)
    if not coupon.active:
        raise InvalidState(f"coupon {code} is no longer active", coupon=code)
    if coupon.amount_off_minor is not None and coupon.currency != currency:
        raise CurrencyMismatch(
            f"coupon {code} takes {coupon.currency} off, not {currency}",
            coupon=code, currency=coupon.currency, expected_currency=currency,
        )  # fmt: skip
    return coupon


async def redeem(uow: UnitOfWork, sub: SubscriptionRow, coupon_code: str) -> Redemption:
    """Attach `coupon_code` to the subscription from its next charged period (the caller
    holds the subscription's row lock and commits it with its own state and events)."""
    coupon = await usable(uow, coupon_code, sub.plan.currency)
    await uow.coupons.redeem(sub.id, coupon.code)
    return Redemption(coupon, 0)
