"""Money on the wire: a decimal *string* amount and an ISO 4217 currency code.

The amount is never a JSON number. It is a plain non-negative decimal with at most as
many fraction digits as the currency's exponent (USD 2, JPY 0, KWD 3): no sign, no
exponent form, no NaN. Inside the worker money is an integer of minor units.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

from billing_contracts.currencies import CURRENCY_EXPONENTS

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_MINOR_UNITS",
    "Currency",
    "Money",
    "MoneyFormatError",
    "exponent_of",
    "format_minor",
    "parse_minor",
    "validate_currency",
]

# BIGINT bound: every amount must fit a PostgreSQL BIGINT of minor units.
MAX_MINOR_UNITS = 2**63 - 1

_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,18})(?:\.([0-9]{1,4}))?")
_CURRENCY = re.compile(r"[A-Z]{3}")
# The same shapes as JSON Schema (ECMA-262) patterns, for the published schema only:
# validation stays with `parse_minor` / `validate_currency` and their messages.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,18})(\.[0-9]{1,4})?$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"


class MoneyFormatError(ValueError):
    """The amount or the currency is not valid money on the wire."""


def exponent_of(currency: str) -> int:
    """The ISO 4217 exponent (number of minor-unit digits) of `currency`."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise MoneyFormatError(f"unknown currency {currency!r}") from None


def parse_minor(amount: str, currency: str) -> int:
    """'12.50', 'USD' -> 1250. Refuses anything that is not exact money."""
    exponent = exponent_of(currency)
    match = _AMOUNT.fullmatch(amount)
    if match is None:
        raise MoneyFormatError(
            f"amount {amount!r} is not a plain non-negative decimal string such as '12.50'"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > exponent:
        raise MoneyFormatError(
            f"amount {amount!r} has {len(fraction)} fraction digits; "
            f"{currency} allows at most {exponent}"
        )
    minor: int = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
    if minor > MAX_MINOR_UNITS:
        raise MoneyFormatError(f"amount {amount!r} is too large")
    return minor


def format_minor(minor: int, currency: str) -> str:
    """1250, 'USD' -> '12.50'; 5, 'JPY' -> '5'; always with the currency's exponent."""
    exponent = exponent_of(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{exponent}d}"


Currency = Annotated[
    StrictStr,
    AfterValidator(lambda code: validate_currency(code)),
    Field(
        pattern=CURRENCY_PATTERN,
        # the constraint runs after the validator, so pydantic leaves it out of the schema
        json_schema_extra={"pattern": CURRENCY_PATTERN},
        description="ISO 4217 alphabetic code, upper case",
        examples=["USD", "EUR", "JPY", "RUB"],
    ),
]


class Money(BaseModel):
    """An amount of money: `{"amount": "12.50", "currency": "USD"}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: StrictStr = Field(
        description=(
            "Non-negative decimal string with at most the currency's exponent of fraction "
            "digits. Never a JSON number."
        ),
        examples=["12.50", "1000", "0.125"],
        max_length=24,
        json_schema_extra={"pattern": AMOUNT_PATTERN},
    )
    currency: Currency

    @model_validator(mode="after")
    def _check_exact(self) -> Self:
        parse_minor(self.amount, self.currency)
        return self

    @property
    def minor(self) -> int:
        """The amount in integer minor units (cents, kopecks, fils...)."""
        return parse_minor(self.amount, self.currency)

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        """Build wire money from minor units, formatted with the currency's exponent."""
        return cls(amount=format_minor(minor, currency), currency=currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def validate_currency(value: Any) -> str:
    """Pydantic-friendly check that a code is a known ISO 4217 currency."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise MoneyFormatError(f"currency {value!r} is not a three-letter upper-case code")
    exponent_of(value)
    return value
