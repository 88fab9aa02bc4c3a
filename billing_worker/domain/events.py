"""Domain events: what happened, ready for the outbox (type + data), plus provider events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One fact for `billing.events`: routing key = `type`, body = the event envelope."""

    type: str
    data: dict[str, Any]
    event_id: UUID = field(default_factory=uuid4)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class PaymentOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class ProviderInvoiceLine:
    """One line of a provider's invoice as its API tells it (Stripe's `lines.data[]`)."""

    description: str
    quantity: int
    amount_minor: int  # negative for a proration's credit for unused time
    proration: bool = False


@dataclass(frozen=True, slots=True)
class ProviderInvoice:
    """A paid invoice of a provider-run subscription as re-read from the provider: what
    its mirror in our numbering copies (`handlers/stripe_invoices.py`)."""

    ref: str  # Stripe's invoice id: the mirror's unique key
    currency: str
    amount_paid_minor: int  # the mirror's total
    tax_minor: int
    billing_reason: str | None
    lines: tuple[ProviderInvoiceLine, ...]


@dataclass(frozen=True, slots=True)
class RefundFacts:
    """A refund as the provider reports it: one refund, or the payment's running total."""

    ref: str  # the provider's refund id, or the charge whose running total this is
    currency: str
    amount_minor: int | None = None  # this refund's amount (YooKassa: one object a refund)
    total_minor: int | None = None  # all refunded on the payment so far (Stripe's charge)


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A provider callback reduced to what billing acts on.

    Parsed from a callback body it is only a claim; `PaymentGateway.confirm` returns it
    as the provider's API tells it, with `confirmation` set, and only such events move
    money.
    """

    provider: str
    event_id: str
    outcome: PaymentOutcome | None  # None: an event type billing does not act on
    provider_ref: str | None
    event_type: str
    failure_code: str | None = None
    failure_message: str | None = None
    object_ref: str | None = None  # the provider object the event is about, when not the payment
    saved_method_ref: str | None = None  # a payment method the provider saved for reuse
    subscription_ref: str | None = None  # a provider-run subscription the event is about
    # A period of that subscription charged by the provider (Stripe's invoice): paid
    # (SUCCEEDED) or not (FAILED); None when the event tells of no charge.
    period_charge: PaymentOutcome | None = None
    amount_minor: int | None = None  # the payment's (or Stripe invoice's) amount
    currency: str | None = None
    transaction_ref: str | None = None  # our transaction id, as the provider's metadata has it
    refund: RefundFacts | None = None
    confirmation: dict[str, Any] | None = None  # what the provider's API answered
    # The saved method's card as the provider's API describes it (brand, last4, exp_month,
    # exp_year), for `billing.payment-method.list`.
    saved_method_card: dict[str, Any] | None = None
    # A paid invoice of a provider-run subscription, lines and all (Stripe's invoice.paid).
    invoice: ProviderInvoice | None = None
