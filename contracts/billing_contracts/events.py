"""Events the worker publishes on `billing.events` (routing key = type) and their data."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from pydantic import BaseModel

from billing_contracts.money import Money

SUBSCRIPTION_CREATED: Final = "subscription.created"
SUBSCRIPTION_RENEWED: Final = "subscription.renewed"
SUBSCRIPTION_PAST_DUE: Final = "subscription.past_due"
SUBSCRIPTION_CANCELED: Final = "subscription.canceled"
SUBSCRIPTION_UPDATED: Final = "subscription.updated"
SUBSCRIPTION_PAUSED: Final = "subscription.paused"
SUBSCRIPTION_RESUMED: Final = "subscription.resumed"
PAYMENT_SUCCESS: Final = "payment.success"
PAYMENT_FAILED: Final = "payment.failed"
DEPOSIT_COMPLETED: Final = "deposit.completed"
WITHDRAWAL_COMPLETED: Final = "withdrawal.completed"
INVOICE_CREATED: Final = "invoice.created"
INVOICE_PAID: Final = "invoice.paid"
INVOICE_VOIDED: Final = "invoice.voided"
INVOICE_UNCOLLECTIBLE: Final = "invoice.uncollectible"
INVOICE_OVERDUE: Final = "invoice.overdue"
BALANCE_LOW: Final = "balance.low"
HOLD_CREATED: Final = "hold.created"
HOLD_CAPTURED: Final = "hold.captured"
HOLD_RELEASED: Final = "hold.released"
HOLD_EXPIRED: Final = "hold.expired"
CREDIT_GRANTED: Final = "credit.granted"
PAYMENT_REFUNDED: Final = "payment.refunded"
PAYMENT_METHOD_SAVED: Final = "payment_method.saved"
PAYMENT_METHOD_REMOVED: Final = "payment_method.removed"


class PaymentSucceeded(BaseModel):
    """`payment.success`: money moved in (or from the balance) for a transaction."""

    transaction_id: UUID
    user_id: str
    kind: str
    amount: Money
    provider: str | None
    provider_ref: str | None
    status: str


class PaymentFailed(BaseModel):
    """`payment.failed`: the provider refused or canceled the payment."""

    transaction_id: UUID
    user_id: str
    kind: str
    amount: Money
    provider: str | None
    provider_ref: str | None
    status: str
    failure_code: str | None
    failure_message: str | None


class DepositCompleted(BaseModel):
    """`deposit.completed`: the account was credited."""

    transaction_id: UUID
    user_id: str
    amount: Money
    provider: str | None
    balance: Money


class WithdrawalCompleted(BaseModel):
    """`withdrawal.completed`: the account was debited."""

    transaction_id: UUID
    user_id: str
    amount: Money
    balance: Money
    description: str
    reference: str | None


class BalanceLow(BaseModel):
    """`balance.low`: once when a balance crosses below the threshold; re-armed above it."""

    user_id: str
    currency: str
    balance: Money
    threshold: Money
