"""Plan commands, queries and reply objects."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

from billing_contracts.envelope import Command, Query
from billing_contracts.money import Money
from billing_contracts.receipts import VatCode, vat_code_field

PlanCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        description="The plan's stable code, chosen by you",
        examples=["pro-monthly"],
    ),
]


class Interval(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class UpsertPlan(Command):
    """`billing.plan.upsert`: create the plan `code`, or replace its terms."""

    code: PlanCode
    name: str = Field(min_length=1, max_length=200, examples=["Pro (monthly)"])
    price: Money = Field(
        description="Price of one billing period; zero for a free plan",
        examples=[{"amount": "9.99", "currency": "USD"}],
    )
    interval: Interval = Field(description="Unit of the billing period")
    interval_count: int = Field(
        default=1,
        ge=1,
        le=366,
        strict=True,
        description="Number of intervals in one billing period (3 + month = quarterly)",
    )
    trial_days: int = Field(
        default=0, ge=0, le=730, strict=True, description="Free days before the first charge"
    )
    stripe_price_id: str | None = Field(
        default=None,
        max_length=255,
        description="The Stripe Price to use for `payment_source=stripe` subscriptions",
        examples=["price_1PqRsT2eZvKYlo2C"],
    )
    active: bool = Field(
        default=True, strict=True, description="Inactive plans take no new subscriptions"
    )
    vat_code: VatCode | None = vat_code_field("the plan's charges")


class ListPlans(Query):
    """`billing.plan.list`: the plans, by code."""

    active_only: bool = Field(default=True, strict=True)


class PlanOut(BaseModel):
    code: str
    name: str
    price: Money
    interval: Interval
    interval_count: int
    trial_days: int
    stripe_price_id: str | None
    active: bool
    vat_code: int | None = None


class PlanList(BaseModel):
    plans: list[PlanOut]
