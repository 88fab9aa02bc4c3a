"""Wallet (prepaid virtual account) commands, queries and reply objects."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from billing_contracts.envelope import Command, Query
from billing_contracts.money import Currency, Money
from billing_contracts.receipts import (
    ReceiptEmail,
    ReceiptPhone,
    customer_email_field,
    customer_phone_field,
)

UserId = Annotated[
    str,
    Field(
        min_length=1, max_length=255, description="The user's id in your system", examples=["u-42"]
    ),
]


class Provider(StrEnum):
    STRIPE = "stripe"
    YOOKASSA = "yookassa"
    SANDBOX = "sandbox"


class TransactionKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    SUBSCRIPTION_CHARGE = "subscription_charge"
    INVOICE_PAYMENT = "invoice_payment"
    REFUND = "refund"
    CREDIT = "credit"


class TransactionStatus(StrEnum):
    CREATED = "created"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"


def _positive(money: Money) -> Money:
    if money.minor <= 0:
        raise ValueError("amount must be greater than zero")
    return money


class Deposit(Command):
    """`billing.wallet.deposit`: put money on the user's account through a provider."""

    user_id: UserId
    amount: Money
    provider: Provider | None = Field(
        default=None, description="Payment provider; the worker's default when absent"
    )
    payment_method_id: str | None = Field(
        default=None,
        max_length=255,
        description="A saved payment method of this user: with Stripe one attached to the "
        "user's Stripe customer (Stripe refuses another's), with YooKassa one saved by an "
        "earlier payment of this user (else `not_found`, before anything is charged); with "
        "the sandbox, `pm_card_chargeDeclined` makes the payment fail and `pm_card_pending` "
        "keeps it pending (never paid). Absent: the user's live default method at the "
        "provider is charged when there is one (no payment_action), else the customer pays "
        "through payment_action",
    )
    return_url: str | None = Field(default=None, max_length=2048)
    customer_email: ReceiptEmail | None = customer_email_field()
    customer_phone: ReceiptPhone | None = customer_phone_field()

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        _positive(self.amount)
        return self


class Withdraw(Command):
    """`billing.wallet.withdraw`: take money from the user's account."""

    user_id: UserId
    amount: Money
    description: str = Field(min_length=1, max_length=500)
    reference: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        _positive(self.amount)
        return self


class GetBalance(Query):
    """`billing.wallet.balance`: the user's balances, one per currency."""

    user_id: UserId
    currency: Currency | None = None


class ListTransactions(Query):
    """`billing.wallet.transactions`: the user's transactions, newest first, paged."""

    user_id: UserId
    currency: Currency | None = None
    limit: int = Field(default=20, ge=1, le=100, strict=True)
    cursor: str | None = Field(default=None, max_length=200)


class TransactionOut(BaseModel):
    id: UUID
    user_id: str
    kind: TransactionKind
    status: TransactionStatus
    amount: Money
    provider: str | None
    created_at: AwareDatetime
    completed_at: AwareDatetime | None
    refund_of: UUID | None = Field(
        default=None,
        description="For a `refund`: the payment it gives (part of) back. The refunds of a "
        "payment never add up to more than it; the payment is `refunded` once they equal it.",
    )


class PaymentAction(BaseModel):
    """What the customer must still do, if anything, for the payment to go through."""

    type: str = Field(examples=["none", "client_secret", "redirect"])
    client_secret: str | None = None
    confirmation_url: str | None = None


class DepositResult(BaseModel):
    transaction: TransactionOut
    payment_action: PaymentAction | None
    payment_method_id: str | None = Field(
        default=None,
        description="The saved method charged: the one named, else the user's default at "
        "the provider; null when the customer pays through payment_action",
    )


class WithdrawResult(BaseModel):
    transaction: TransactionOut
    balance: Money


class AccountBalance(BaseModel):
    currency: str
    balance: Money
    available: Money | None = Field(
        default=None,
        description="What withdrawals, charges and holds may use: the balance less open "
        "holds (absent from workers before holds)",
    )


class BalanceResult(BaseModel):
    user_id: str
    accounts: list[AccountBalance]


class TransactionPage(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None
