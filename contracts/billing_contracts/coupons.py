"""Coupon commands, queries and reply objects (discounts on invoices and subscriptions)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, Field, model_validator

from billing_contracts.envelope import Command, Query
from billing_contracts.money import AMOUNT_PATTERN, Currency, Money

# 0 < percent <= 100 with at most 4 decimal places, as a decimal string (never a float);
# the pattern admits 0, the model refuses it.
PERCENT_OFF_PATTERN = r"^(100(\.0{1,4})?|[1-9]?[0-9](\.[0-9]{1,4})?)$"

CouponCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The coupon's stable code, chosen by you (letters, digits, `.`, `_`, `-`)",
        examples=["WELCOME10"],
    ),
]


class CouponDuration(StrEnum):
    """How long a coupon discounts a subscription: its first charged period (`once`),
    `duration_in_periods` of them (`repeating`), or every one (`forever`)."""

    ONCE = "once"
    REPEATING = "repeating"
    FOREVER = "forever"


Duration = CouponDuration  # the name the models below use


class UpsertCoupon(Command):
    """`billing.coupon.upsert` (admins only): create the coupon `code`, or change its `name`
    or `active`. Its terms (percent_off / amount_off + currency, duration,
    duration_in_periods, stripe_coupon_id) never change: other terms for an existing code
    are `invalid_state` (use a new code). An inactive coupon is refused on new use;
    redemptions already made go on."""

    code: CouponCode
    name: str = Field(min_length=1, max_length=200, examples=["Welcome: 10 % off"])
    percent_off: str | None = Field(
        default=None,
        pattern=PERCENT_OFF_PATTERN,
        description="0 < percent <= 100, at most 4 decimal places; exactly one of "
        "percent_off and amount_off",
        examples=["10"],
    )
    amount_off: str | None = Field(
        default=None,
        pattern=AMOUNT_PATTERN,
        description="A decimal string in `currency` (at most its exponent's digits), > 0",
        examples=["5.00"],
    )
    currency: Currency | None = Field(default=None, description="Required iff amount_off")
    duration: Duration = Field(
        description="`once`: the first charged period; `repeating`: `duration_in_periods` "
        "charged periods; `forever`: every period (a trial period does not count)"
    )
    duration_in_periods: int | None = Field(default=None, ge=1, le=1000, strict=True)
    active: bool = Field(default=True, strict=True)
    stripe_coupon_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The Stripe coupon passed on a Stripe subscription's create; without "
        "it the coupon is refused for Stripe subscriptions (`invalid_message`)",
        examples=["co_welcome10"],
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("exactly one of percent_off and amount_off")
        if (self.amount_off is None) != (self.currency is None):
            raise ValueError("currency is required with amount_off, and only with it")
        if self.percent_off is not None and not any(c in "123456789" for c in self.percent_off):
            raise ValueError("percent_off must be greater than 0")
        if self.amount_off is not None and not any(c in "123456789" for c in self.amount_off):
            raise ValueError("amount_off must be greater than 0")
        if (self.duration == "repeating") != (self.duration_in_periods is not None):
            raise ValueError("duration_in_periods is required with repeating, and only with it")
        return self


class ListCoupons(Query):
    """`billing.coupon.list`: every coupon, by code."""


class CouponOut(BaseModel):
    code: str
    name: str
    percent_off: str | None = Field(default=None, examples=["10"])
    amount_off: Money | None = None
    duration: Duration
    duration_in_periods: int | None = None
    active: bool
    stripe_coupon_id: str | None = None


class CouponList(BaseModel):
    coupons: list[CouponOut]


class DiscountOut(BaseModel):
    """One discount of an invoice: the coupon's terms as the invoice was issued with them."""

    coupon: str = Field(description="The coupon's code", examples=["WELCOME10"])
    percent_off: str | None = Field(default=None, examples=["10"])
    amount_off: Money | None = None
    amount: Money = Field(description="What it took off the invoice (the lines' shares)")
