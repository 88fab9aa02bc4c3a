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
class ProviderEvent:
    """A verified provider callback, reduced to what billing acts on."""

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
    amount_minor: int | None = None  # what a provider-run subscription charged
    currency: str | None = None
