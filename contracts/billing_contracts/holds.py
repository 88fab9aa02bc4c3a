"""Holds (money reserved for a saga, then captured or released) and admin credits."""

from __future__ import annotations

from enum import StrEnum
from typing import Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from billing_contracts.envelope import Command
from billing_contracts.money import Money
from billing_contracts.wallet import TransactionOut, UserId

MAX_HOLD_SECONDS = 30 * 24 * 3600  # a hold lasts at most 30 days


def _positive(money: Money | None) -> None:
    if money is not None and money.minor <= 0:
        raise ValueError("amount must be greater than zero")


class PlaceHold(Command):
    """`billing.wallet.hold`: reserve money of the user's account until captured,
    released or expired. Withdrawals, charges and other holds may use only what is
    available (`balance - open holds`)."""

    user_id: UserId
    amount: Money
    expires_in_seconds: int = Field(
        ge=1, le=MAX_HOLD_SECONDS, strict=True,
        description="Seconds until the hold expires and is released by the worker",
    )  # fmt: skip
    reference: str | None = Field(
        default=None, max_length=255, description="Your saga's reference, echoed in events"
    )

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        _positive(self.amount)
        return self


class CaptureHold(Command):
    """`billing.wallet.hold.capture`: turn (part of) one of the user's open holds into a
    withdrawal; the rest is released."""

    user_id: UserId
    hold_id: UUID
    amount: Money | None = Field(default=None, description="At most the hold; all of it if absent")

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        _positive(self.amount)
        return self


class ReleaseHold(Command):
    """`billing.wallet.hold.release`: free one of the user's open holds."""

    user_id: UserId
    hold_id: UUID


class HoldStatus(StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class HoldOut(BaseModel):
    id: UUID
    user_id: str
    status: HoldStatus
    amount: Money
    captured: Money | None = Field(description="What a capture took (null unless captured)")
    reference: str | None
    expires_at: AwareDatetime
    created_at: AwareDatetime
    closed_at: AwareDatetime | None


class HoldResult(BaseModel):
    """The hold and the account after it: `available` = `balance` - open holds."""

    hold: HoldOut
    balance: Money
    available: Money


class CaptureResult(BaseModel):
    hold: HoldOut
    transaction: TransactionOut = Field(description="The withdrawal the capture made")
    balance: Money
    available: Money


class GrantCredit(Command):
    """`billing.wallet.credit`: goodwill or promotional money, granted by an admin."""

    user_id: UserId
    amount: Money
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        _positive(self.amount)
        return self


class CreditResult(BaseModel):
    transaction: TransactionOut
    balance: Money


class HoldEvent(BaseModel):
    """`hold.created`, `hold.captured`, `hold.released` and `hold.expired`."""

    hold_id: UUID
    user_id: str
    status: HoldStatus
    amount: Money
    captured: Money | None
    reference: str | None
    expires_at: AwareDatetime
    balance: Money
    available: Money


class CreditGranted(BaseModel):
    """`credit.granted`: an admin put money on the account (no payment behind it)."""

    transaction_id: UUID
    user_id: str
    amount: Money
    balance: Money
    reason: str
    granted_by: str = Field(description="The broker user (validated AMQP user_id) who sent it")
