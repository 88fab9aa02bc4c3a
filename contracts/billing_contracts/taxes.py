"""Tax rate commands, queries and reply objects (the rates invoice lines name)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from billing_contracts.envelope import Command, Query

# 0 <= percent < 100 with at most 4 decimal places, as a decimal string (never a float).
PERCENT_PATTERN = r"^(0|[1-9][0-9]?)(\.[0-9]{1,4})?$"

TaxRateCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The rate's stable code, chosen by you (letters, digits, `.`, `_`, `-`)",
        examples=["vat-de-19"],
    ),
]
Percent = Annotated[
    str,
    Field(
        pattern=PERCENT_PATTERN,
        description="A decimal string, 0 <= percent < 100, at most 4 decimal places",
        examples=["19", "7.5", "8.875"],
    ),
]


class UpsertTaxRate(Command):
    """`billing.tax-rate.upsert` (admins only): create the rate `code`, or change it. Invoices
    already issued keep the tax they were issued with; only new invoices get the change."""

    code: TaxRateCode
    name: str = Field(min_length=1, max_length=200, examples=["VAT (DE) 19 %"])
    percent: Percent
    inclusive: bool = Field(
        strict=True,
        description="true: a line's amount already contains the tax (tax = amount x p / "
        "(100 + p)); false: the tax is added on top (tax = amount x p / 100)",
    )


class ListTaxRates(Query):
    """`billing.tax-rate.list`: every tax rate, by code."""


class TaxRateOut(BaseModel):
    code: str
    name: str
    percent: str = Field(examples=["19"])
    inclusive: bool


class TaxRateList(BaseModel):
    tax_rates: list[TaxRateOut]
