"""Refunds: give (part of) a completed payment back, to where it came from or onto the
user's balance."""

from __future__ import annotations

from enum import StrEnum
from typing import Self
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from billing_contracts.envelope import Command
from billing_contracts.money import Money
from billing_contracts.wallet import TransactionOut, UserId


class RefundDestination(StrEnum):
    ORIGINAL = "original"  # back through the provider that took the payment
    BALANCE = "balance"  # onto the user's account in the payment's currency


class RefundPayment(Command):
    """`billing.payment.refund`: refund one of the user's completed payments, in full or
    in part."""

    user_id: UserId
    transaction_id: UUID = Field(
        description="The payment: a deposit, an invoice payment or a subscription charge"
    )
    amount: Money | None = Field(
        default=None, description="What to refund, in the payment's currency; default: all left"
    )
    reason: str | None = Field(default=None, max_length=500)
    destination: RefundDestination = Field(
        description="`original`: refunded at the provider (a deposit's amount leaves the "
        "balance first); `balance`: credited to the user's account at once (not for deposits). "
        "Payments made from the balance are always refunded to it."
    )

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        if self.amount is not None and self.amount.minor <= 0:
            raise ValueError("amount must be greater than zero")
        return self


class RefundResult(BaseModel):
    refund: TransactionOut = Field(
        description="The refund transaction: `completed`, or `processing` until the provider "
        "confirms it (then `payment.refunded` follows)"
    )
    payment: TransactionOut
    refunded_total: Money = Field(description="The payment's completed refunds, this one included")
    destination: RefundDestination


class PaymentRefunded(BaseModel):
    """`payment.refunded`: a refund completed (by command, or made at the provider)."""

    transaction_id: UUID = Field(description="The payment refunded")
    refund_id: UUID
    user_id: str
    amount: Money
    refunded_total: Money
    destination: RefundDestination
    provider: str | None = Field(description="Who paid it back: the provider, or `balance`")
