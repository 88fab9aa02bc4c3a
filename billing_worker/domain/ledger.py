"""The ledger without I/O: transactions as they are recorded, one named constructor per
kind of movement, the audit trail of a provider's answer, and the refusal of a balance
that is too small.

A `Transaction` is what a handler records (`Wallet.record`); db/wallet.py maps it to its
row. Amounts are integer minor units; every transaction carries the trail of how it got
to its status (`domain/transactions.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol
from uuid import UUID, uuid5

from billing_contracts.wallet import TransactionKind as Kind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.domain.errors import InsufficientFunds
from billing_worker.domain.money import format_minor
from billing_worker.domain.transactions import Transition, path

_IDS = UUID("6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11")  # namespace of derived ids


def derived_id(scope: str, user_id: str, idempotency_key: str) -> UUID:
    """The same command always names the same transaction (and provider idempotency key).

    The user is part of it, as of the command's idempotency scope: two users' equal keys
    name two different rows (and two different payments at the provider).
    """
    return uuid5(_IDS, json.dumps([scope, user_id, idempotency_key]))


BALANCE = "balance"  # the `provider` of money moved on the virtual account itself

# An instant movement (withdrawal, balance charge, refund): created, processing and
# completed in one database transaction.
INSTANT = (Status.CREATED, Status.PROCESSING, Status.COMPLETED)

# What a provider's answer does to a `created` payment: the statuses it moves through.
# Keyed by `providers.base.PaymentStatus` (a StrEnum: its values are these strings).
PAYMENT_STEPS: Mapping[str, tuple[Status, ...]] = MappingProxyType(
    {
        "pending": (Status.PROCESSING,),
        "succeeded": (Status.PROCESSING, Status.COMPLETED),
        "failed": (Status.FAILED,),
        "canceled": (Status.PROCESSING, Status.CANCELED),
    }
)


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """An account's balance after a credit or debit moved it (`Wallet.move_balance`)."""

    account_id: UUID
    balance_minor: int
    crossed_below: bool  # the balance just fell under the low-balance threshold
    threshold_minor: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """A new transaction and the trail of its status; the fields are the row's columns."""

    id: UUID
    user_id: str
    account_id: UUID | None
    kind: Kind
    status: Status
    amount_minor: int
    currency: str
    provider: str | None
    provider_ref: str | None
    created_at: datetime
    completed_at: datetime | None
    trail: tuple[Transition, ...]
    description: str | None = None
    reference: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    subscription_id: UUID | None = None
    invoice_id: UUID | None = None
    refund_of: UUID | None = None
    provider_confirmation: dict[str, Any] | None = None

    @classmethod
    def deposit(
        cls, id: UUID, user_id: str, amount_minor: int, currency: str, provider: str, at: datetime
    ) -> Transaction:
        """A provider payment onto the balance, `created`; its account is opened with the
        provider's answer (a refusal opens nothing)."""
        return cls(
            id, user_id, None, Kind.DEPOSIT, Status.CREATED, amount_minor, currency, provider,
            None, at, None, trail=tuple(path(Status.CREATED, reason=f"{provider} payment")),
        )  # fmt: skip

    @classmethod
    def withdrawal(
        cls, id: UUID, user_id: str, account_id: UUID, amount_minor: int, currency: str,
        at: datetime, *, description: str | None, reference: str | None,
    ) -> Transaction:  # fmt: skip
        """Money taken off the balance, completed at once."""
        return cls(
            id, user_id, account_id, Kind.WITHDRAWAL, Status.COMPLETED, amount_minor, currency,
            BALANCE, None, at, at, trail=tuple(path(*INSTANT, reason="withdrawal")),
            description=description, reference=reference,
        )  # fmt: skip

    @classmethod
    def invoice_payment(
        cls, id: UUID, user_id: str, account_id: UUID, amount_minor: int, currency: str,
        at: datetime, *, invoice_id: UUID, number: str,
    ) -> Transaction:  # fmt: skip
        """An invoice paid from the balance, completed at once."""
        return cls(
            id, user_id, account_id, Kind.INVOICE_PAYMENT, Status.COMPLETED, amount_minor,
            currency, BALANCE, None, at, at, trail=tuple(path(*INSTANT, reason="invoice payment")),
            description=f"invoice {number}", reference=number, invoice_id=invoice_id,
        )  # fmt: skip

    @classmethod
    def period_paid(cls, charge: PeriodCharge, at: datetime, account_id: UUID) -> Transaction:
        """A subscription period paid from the balance, completed at once."""
        return charge.transaction(
            at, Status.COMPLETED, tuple(path(*INSTANT)), account_id=account_id, completed_at=at
        )

    @classmethod
    def period_declined(
        cls, charge: PeriodCharge, at: datetime, *, code: str, message: str
    ) -> Transaction:
        """A subscription period's charge that failed (the balance, or the provider)."""
        return charge.transaction(
            at, Status.FAILED, tuple(path(Status.CREATED, Status.FAILED, reason=code)),
            failure_code=code, failure_message=message,
        )  # fmt: skip

    @classmethod
    def period_payment(cls, charge: PeriodCharge, at: datetime, provider: str) -> Transaction:
        """A subscription period's charge at a provider, `created` until it answers."""
        trail = tuple(path(Status.CREATED, reason=f"{provider} payment"))
        return charge.transaction(at, Status.CREATED, trail, provider=provider)

    @classmethod
    def provider_invoice(
        cls, id: UUID, user_id: str, amount_minor: int, currency: str, provider: str,
        provider_ref: str | None, at: datetime, *, paid: bool, failure_code: str | None,
        subscription_id: UUID, confirmation: dict[str, Any] | None,
    ) -> Transaction:  # fmt: skip
        """An invoice a provider billed for a subscription it runs itself, paid or failed
        there: recorded as it ended."""
        trail = path(*INSTANT) if paid else path(Status.CREATED, Status.FAILED)
        return cls(
            id, user_id, None, Kind.SUBSCRIPTION_CHARGE,
            Status.COMPLETED if paid else Status.FAILED, amount_minor, currency, provider,
            provider_ref, at, at if paid else None, trail=tuple(trail),
            failure_code=failure_code, subscription_id=subscription_id,
            provider_confirmation=confirmation if paid else None,
        )  # fmt: skip

    @classmethod
    def refund(
        cls, payment: Refundable, id: UUID, amount_minor: int, provider_ref: str, at: datetime,
        *, reason: str, confirmation: dict[str, Any],
    ) -> Transaction:  # fmt: skip
        """Part (or all) of a completed payment given back, completed at once; a deposit's
        refund leaves its account (the balance goes down), others leave none."""
        return cls(
            id, payment.user_id,
            payment.account_id if payment.kind == Kind.DEPOSIT else None,
            Kind.REFUND, Status.COMPLETED, amount_minor, payment.currency, payment.provider,
            provider_ref, at, at, trail=tuple(path(*INSTANT, reason=reason)),
            description=f"refund of {payment.id}", subscription_id=payment.subscription_id,
            invoice_id=payment.invoice_id, refund_of=payment.id,
            provider_confirmation=confirmation,
        )  # fmt: skip

    @classmethod
    def credit(
        cls, id: UUID, user_id: str, account_id: UUID, amount_minor: int, currency: str,
        at: datetime, *, reason: str,
    ) -> Transaction:  # fmt: skip
        """Money an admin grants onto the balance (no payment behind it), completed at once."""
        return cls(
            id, user_id, account_id, Kind.CREDIT, Status.COMPLETED, amount_minor, currency,
            BALANCE, None, at, at, trail=tuple(path(*INSTANT, reason="credit")),
            description=reason,
        )  # fmt: skip


class Refundable(Protocol):
    """The payment a refund gives back (a recorded transaction)."""

    @property
    def id(self) -> UUID: ...
    @property
    def user_id(self) -> str: ...
    @property
    def account_id(self) -> UUID | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def subscription_id(self) -> UUID | None: ...
    @property
    def invoice_id(self) -> UUID | None: ...


@dataclass(frozen=True, slots=True)
class PeriodCharge:
    """The charge of one subscription period (and attempt): what any of its transactions
    (`Transaction.period_paid`, `period_declined`, `period_payment`) is for."""

    id: UUID
    user_id: str
    subscription_id: UUID
    amount_minor: int
    currency: str
    description: str

    def transaction(
        self, at: datetime, status: Status, trail: tuple[Transition, ...], *,
        account_id: UUID | None = None, completed_at: datetime | None = None,
        provider: str = BALANCE, failure_code: str | None = None,
        failure_message: str | None = None,
    ) -> Transaction:  # fmt: skip
        return Transaction(
            self.id, self.user_id, account_id, Kind.SUBSCRIPTION_CHARGE, status,
            self.amount_minor, self.currency, provider, None, at, completed_at, trail=trail,
            description=self.description, failure_code=failure_code,
            failure_message=failure_message, subscription_id=self.subscription_id,
        )  # fmt: skip


def insufficient_funds(
    currency: str, balance_minor: int, wanted: str, *, held_minor: int = 0, **details: object
) -> InsufficientFunds:
    """The refusal of a debit the balance does not cover; `wanted` names what it is
    ("100.00", "the invoice total 100.00"). With open holds (`held_minor`) what counts is
    what is available, also given in the details."""
    balance = format_minor(balance_minor, currency)
    if held_minor:
        available = format_minor(balance_minor - held_minor, currency)
        return InsufficientFunds(
            f"the available {currency} balance {available} (balance {balance}, less open "
            f"holds) is less than {wanted}",
            balance={"amount": balance, "currency": currency},
            available={"amount": available, "currency": currency},
            **details,
        )
    return InsufficientFunds(
        f"the {currency} balance {balance} is less than {wanted}",
        balance={"amount": balance, "currency": currency},
        **details,
    )
