"""Plan commands, queries and reply objects."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, Field

from billing_contracts.envelope import Command, Query
from billing_contracts.money import Money
from billing_contracts.receipts import VatCode, vat_code_field
from billing_contracts.taxes import TaxRateCode

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
    tax_rate: TaxRateCode | None = Field(
        default=None,
        description="A tax rate (`billing.tax-rate.upsert`) the periods of balance and "
        "YooKassa subscriptions are taxed at: each period charges its invoice's total "
        "(exclusive: price x quantity + tax; inclusive: price x quantity). Its code, "
        "percent and inclusiveness are copied into the version: a change of any is a new "
        "version. An unknown code is `not_found`.",
    )


class ListPlans(Query):
    """`billing.plan.list`: the current version of each plan, by code; or, given `code`,
    every version of that plan."""

    active_only: bool = Field(
        default=True, strict=True, description="Leave out inactive plans (not with `code`)"
    )
    code: PlanCode | None = Field(
        default=None,
        description="Given: every version of this plan, oldest first, active or not "
        "(an unknown code: an empty list)",
    )


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
    version: int | None = Field(
        default=None,
        description="The version of the plan's terms (1, 2, ...); an upsert that changes "
        "price, currency, interval, interval_count, trial_days or the tax rate makes the "
        "next one",
    )
    # Added with tax rates; absent from older workers' replies.
    tax_rate: str | None = Field(default=None, description="The rate its periods are taxed at")
    tax_percent: str | None = Field(default=None, description="Its percent, for this version")
    tax_inclusive: bool | None = None


class PlanList(BaseModel):
    plans: list[PlanOut]


class MigrateWhen(StrEnum):
    NEXT_PERIOD = "next_period"


class MigratePlan(Command):
    """`billing.plan.migrate`: move the live subscriptions of a plan's older versions (or
    of `from_version` only) to `to_version`, from their next period on (admins only)."""

    plan_code: PlanCode
    to_version: int = Field(ge=1, strict=True, description="The version to move them to")
    from_version: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Only the subscriptions on this version; absent: every version below "
        "to_version",
    )
    when: MigrateWhen = Field(
        default=MigrateWhen.NEXT_PERIOD,
        description="`next_period`: each keeps its paid period; its next renewal charges "
        "the new version's terms",
    )


class SkippedSubscription(BaseModel):
    subscription_id: UUID
    reason: str = Field(
        description="`stripe` (Stripe runs its price: move it there), `incomplete` (its "
        "first payment is not confirmed), `payment_in_flight` (a provider call is open) or "
        "`past_due` (its unpaid period's invoice is priced on its version: settle it first)"
    )


class PlanMigration(BaseModel):
    plan_code: str
    to_version: int
    moved: int = Field(description="How many subscriptions were moved")
    skipped: list[SkippedSubscription] = Field(
        description="Live subscriptions of the versions migrated that were left as they were"
    )
