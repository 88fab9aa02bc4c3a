"""The gateway protocol every payment provider implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol
from uuid import UUID

from billing_contracts.subscriptions import SubscriptionStatus
from billing_worker.domain.events import ProviderEvent


class PaymentStatus(StrEnum):
    PENDING = "pending"  # the provider will tell us the outcome through an event
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"  # canceled at our request (`cancel_payment`); nothing was paid


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    transaction_id: UUID
    user_id: str
    amount_minor: int
    currency: str
    idempotency_key: str  # derived from the command's key: a redelivery makes no second payment
    payment_method_id: str | None = None
    return_url: str | None = None
    description: str | None = None
    customer_ref: str | None = None  # the provider's customer, for gateways that need one
    receipt: Mapping[str, Any] | None = None  # YooKassa's 54-FZ receipt, built in phase one


@dataclass(frozen=True, slots=True)
class Notification:
    """A provider callback the gateway itself will deliver to `billing.provider-events`."""

    event_id: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. its signature


class Forged(ValueError):
    """A callback that is not provably from the provider (bad or missing signature)."""


def signature_header(headers: Mapping[str, Any], name: str, missing: str) -> str:
    """A callback's signature header as text; Forged(`missing`) when there is none."""
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or not value:
        raise Forged(missing)
    return value


@dataclass(frozen=True, slots=True)
class PaymentResult:
    provider_ref: str | None  # None only when the provider refused before creating anything
    status: PaymentStatus
    action: Mapping[str, Any] | None = None  # what the customer must do (client_secret, redirect)
    failure_code: str | None = None
    failure_message: str | None = None
    notifications: tuple[Notification, ...] = field(default_factory=tuple)
    saved_method_ref: str | None = None  # a payment method the provider saved for reuse
    amount_minor: int | None = None  # what the provider says the payment is for
    currency: str | None = None
    transaction_ref: str | None = None  # our transaction id, from the provider's metadata
    confirmation: Mapping[str, Any] | None = None  # the provider's answer, for the ledger


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund of (part of) a payment at the provider that took it."""

    refund_id: UUID  # our refund transaction
    payment_ref: str  # the provider's payment (Stripe: the PaymentIntent)
    amount_minor: int
    currency: str
    idempotency_key: str  # derived from `refund_id`: a second call makes no second refund
    reason: str | None = None
    # Extra fields of the provider's refund body (e.g. a YooKassa `receipt`), by name.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A refund as the provider answered it; `confirmation` is kept with our refund."""

    ref: str  # the provider's refund id
    status: PaymentStatus  # succeeded, pending (told later) or failed
    amount_minor: int
    currency: str
    payment_ref: str | None = None
    failure_message: str | None = None
    confirmation: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProviderSubscription:
    """A subscription the provider bills by itself (Stripe), as it stands there now."""

    ref: str
    status: str  # the provider's own status; its gateway's `subscription_status` reads it
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    client_secret: str | None = None  # when the first payment needs the customer
    paused: bool = False  # the provider collects nothing for now (Stripe: pause_collection)
    resumes_at: datetime | None = None  # when the provider ends that pause by itself
    price_ref: str | None = None  # the price its (first) item bills
    quantity: int | None = None  # that item's seats
    latest_invoice: LatestInvoice | None = None  # when the read expanded it


@dataclass(frozen=True, slots=True)
class LatestInvoice:
    """The provider's latest invoice of a subscription (Stripe's, expanded): a plan
    change's proration invoice says what the change charged (`total` < 0: credited)."""

    ref: str
    status: str
    billing_reason: str | None
    total_minor: int
    amount_paid_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """A change of a subscription the provider runs: undo a period-end cancel (`resume`),
    pause collecting (until `resumes_at`, or until unpaused), stop pausing, or move it
    onto another price and quantity (`change_plan`: `price_ref` x `quantity`, Stripe's
    `proration_behavior`, idempotent on `idempotency_key`)."""

    action: Literal["resume", "pause", "unpause", "change_plan"]
    resumes_at: datetime | None = None
    price_ref: str | None = None
    quantity: int | None = None
    proration_behavior: Literal["always_invoice", "none"] | None = None
    idempotency_key: str | None = None


class SubscriptionGateway(Protocol):
    """A provider that runs subscriptions itself; its webhooks drive our copy."""

    async def create_subscription(
        self,
        *,
        customer_ref: str,
        price_ref: str,
        payment_method_id: str | None,
        trial_days: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
        quantity: int = 1,
        coupon_ref: str | None = None,
    ) -> ProviderSubscription: ...

    async def cancel_subscription(
        self, ref: str, *, at_period_end: bool
    ) -> ProviderSubscription: ...

    async def change_subscription(
        self, ref: str, change: SubscriptionChange
    ) -> ProviderSubscription: ...

    async def fetch_subscription(self, ref: str) -> ProviderSubscription: ...

    def subscription_status(self, status: str) -> SubscriptionStatus | None:
        """What the provider's subscription status means for ours; None when unknown."""
        ...


class PaymentGateway(Protocol):
    """One payment provider. Handlers see only this, never an SDK."""

    name: str
    needs_customer: bool  # create_customer must run once per user before payments
    # The provider charges a saved method id as given, whoever names it: the worker takes
    # one only if it saved it for this user (handlers/payments.py, `saved_method_of`).
    trusts_method_ids: bool
    # `fetch_payment` tells a payment's outcome: the reconciler re-reads stuck ones.
    rereadable: bool

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        """Create (idempotently) the provider's customer for one billing user; its id."""
        ...

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        """Start a payment; idempotent on `request.idempotency_key`."""
        ...

    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        """Re-read a payment's state from the provider (reconciliation, untrusted callbacks)."""
        ...

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Check the callback's own signature, where the provider signs; raise Forged."""
        ...

    def parse_event(self, body: bytes) -> ProviderEvent:
        """Turn a callback body into the claim it makes; ValueError when malformed."""
        ...

    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        """Ask the provider's API about what the claim names and return the event as the
        provider tells it (status, amount, currency, our transaction id, saved method,
        refunds) with its `confirmation`; None when the provider does not confirm it
        (unknown object, other state). Raises TransientError when the provider is away."""
        ...

    async def cancel_payment(self, provider_ref: str, idempotency_key: str) -> PaymentResult:
        """Cancel a payment nobody paid yet; what the provider says it now is: CANCELED,
        SUCCEEDED (the customer paid first: the payment stands), FAILED, or PENDING when
        the provider cannot cancel it yet. Idempotent on `idempotency_key`."""
        ...

    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refund (part of) a payment; idempotent on `request.idempotency_key`. A refusal
        after which no refund exists is `ProviderError`."""
        ...

    async def fetch_refund(self, ref: str) -> RefundResult:
        """Re-read a refund from the provider (the reconciler, for pending refunds)."""
        ...


class SubscriptionProvider(PaymentGateway, SubscriptionGateway, Protocol):
    """A payment provider that also runs subscriptions itself (Stripe)."""


class UnknownProvider(LookupError):
    pass


class Gateways:
    """The configured gateways by name."""

    def __init__(self, gateways: Mapping[str, PaymentGateway], default: str | None) -> None:
        self._gateways = dict(gateways)
        self.default = default

    def get(self, name: str | None) -> PaymentGateway:
        key = name or self.default
        try:
            return self._gateways[key or ""]
        except KeyError:
            raise UnknownProvider(key or "(none configured)") from None

    async def close(self) -> None:
        """Release the gateways' HTTP clients (those that keep one)."""
        for gateway in self._gateways.values():
            close = getattr(gateway, "close", None)
            if close is not None:
                await close()

    @property
    def names(self) -> list[str]:
        return list(self._gateways)

    def __contains__(self, name: str) -> bool:
        return name in self._gateways
