"""A typed asyncio client of billing-worker for Python services (extra `client`).

    pip install 'billing-contracts[client]'

    async with BillingClient("amqp://guest:guest@127.0.0.1:5672/") as billing:
        result = await billing.withdraw(
            user_id="u-42", amount=Money(amount="9.99", currency="USD"),
            description="Pro plan", idempotency_key="order-42-withdraw",
        )

One robust AMQP connection; one channel with publisher confirms carries every request,
and its replies come back on RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`,
consumed with no-ack on that same channel), so there is no reply queue to declare or
clean up. Any number of concurrent calls share the connection: each request has its own
`correlation_id` and waiting future, and replies are matched by it (FastStream's
`broker.request` would serialise concurrent calls). Every call has a timeout.

Requests are built with the contract models, so bad input fails here with pydantic's
`ValidationError` before anything is sent. A successful reply is returned as its typed
model; an error reply is raised as the exception of its code (see `client_errors`).

Commands take a required `idempotency_key`: there is deliberately no random default.
The key is what makes a retry safe. After a `BillingTimeout` (or a lost connection) the
outcome is unknown, and only a retry with the *same* key returns the first reply
instead of, say, charging twice; a key invented inside the client would differ on
every attempt and defeat that. Derive it from your own operation (`order-42-pay`).

Every request carries the AMQP `user_id` of the connection's login (the URL's user
name), which RabbitMQ validates: with the worker's access policy on, that broker user
is who the worker believes sent it; a user the policy does not allow the queue gets
`Forbidden`.

`events()` consumes `billing.events` with typed envelopes, acknowledging each event
after your loop body returns and skipping duplicates by `event_id`.

The client is a package by noun: `connection` (the AMQP connection and direct replies),
`rpc` (`request`), one module of typed calls per area (`wallet`, `plans`,
`subscriptions`, `invoices`), `events` (the typed envelopes, `parse_event`) and
`stream` (`events()` and `EventStream`). Import every name from `billing_contracts.client`.
"""

from __future__ import annotations

try:
    import aio_pika  # noqa: F401 - checked first, for the message below
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "billing_contracts.client needs aio-pika: pip install 'billing-contracts[client]'"
    ) from missing

from billing_contracts.catalog import EVENT_MODELS
from billing_contracts.client.connection import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from billing_contracts.client.connection import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from billing_contracts.client.connection import DIRECT_REPLY_TO
from billing_contracts.client.coupons import CouponCalls
from billing_contracts.client.deposit_cancel import DepositCancelCalls
from billing_contracts.client.events import Event, EventData, parse_event
from billing_contracts.client.holds import HoldCalls
from billing_contracts.client.invoices import InvoiceCalls
from billing_contracts.client.payment_methods import PaymentMethodCalls
from billing_contracts.client.plans import PlanCalls
from billing_contracts.client.refunds import RefundCalls
from billing_contracts.client.stream import DEFAULT_DEDUPE_SIZE as DEFAULT_DEDUPE_SIZE
from billing_contracts.client.stream import EventCalls, EventStream
from billing_contracts.client.subscription_changes import SubscriptionChangeCalls
from billing_contracts.client.subscriptions import SubscriptionCalls
from billing_contracts.client.taxes import TaxRateCalls
from billing_contracts.client.wallet import WalletCalls
from billing_contracts.client_errors import (
    ERRORS,
    BillingError,
    BillingTimeout,
    BillingUnavailable,
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InternalError,
    InvalidMessage,
    InvalidState,
    MalformedReply,
    NotFound,
    ProviderError,
    error_from_reply,
    parse_reply,
)

__all__ = [
    "DIRECT_REPLY_TO",
    "ERRORS",
    "EVENT_MODELS",
    "BillingClient",
    "BillingError",
    "BillingTimeout",
    "BillingUnavailable",
    "CurrencyMismatch",
    "Event",
    "EventData",
    "EventStream",
    "Forbidden",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InternalError",
    "InvalidMessage",
    "InvalidState",
    "MalformedReply",
    "NotFound",
    "ProviderError",
    "error_from_reply",
    "parse_event",
    "parse_reply",
]


class BillingClient(
    WalletCalls,
    PlanCalls,
    SubscriptionCalls,
    InvoiceCalls,
    EventCalls,
    DepositCancelCalls,
    HoldCalls,
    RefundCalls,
    PaymentMethodCalls,
    SubscriptionChangeCalls,
    TaxRateCalls,
    CouponCalls,
):
    """Typed RPC calls to billing-worker over one RabbitMQ connection.

    Use it as `async with BillingClient(url) as billing:` or
    `billing = await BillingClient.connect(url)` ... `await billing.close()`.
    `timeout` (seconds) is the default of every call; each method takes its own
    `timeout=` too. `prefetch` is the default number of unacknowledged events an
    `events()` stream holds.

    The calls by area: `WalletCalls` (`deposit`, `withdraw`, `balance`, `transactions`),
    `PlanCalls` (`upsert_plan`, `list_plans`, `migrate_plan`), `SubscriptionCalls`
    (`create_subscription`, `cancel_subscription`, `get_subscription`,
    `list_subscriptions`), `InvoiceCalls` (`create_invoice`, `pay_invoice`,
    `void_invoice`, `mark_invoice_uncollectible`, `get_invoice`, `list_invoices`),
    `DepositCancelCalls` (`cancel_deposit`), `HoldCalls` (`hold`, `capture_hold`,
    `release_hold`, `credit`), `RefundCalls` (`refund_payment`), `PaymentMethodCalls`
    (`setup_payment_method`, `list_payment_methods`, `detach_payment_method`,
    `set_default_payment_method`, `update_subscription_payment_method`),
    `SubscriptionChangeCalls` (`resume_subscription`, `pause_subscription`,
    `unpause_subscription`), `TaxRateCalls` (`upsert_tax_rate`, `list_tax_rates`),
    `CouponCalls` (`upsert_coupon`, `list_coupons`) and
    `EventCalls` (`events`), all over `request()`
    (`RpcClient`) on one `Connection`.
    """
