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
"""

# Every call takes `timeout=` (seconds): a per-call deadline is this API's contract, and
# it covers publishing and waiting together, which a caller's `asyncio.timeout` would not
# turn into a typed `BillingTimeout`.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

from pydantic import BaseModel, ValidationError

try:
    import aio_pika
    from aio_pika.abc import (
        AbstractChannel,
        AbstractIncomingMessage,
        AbstractRobustChannel,
        AbstractRobustConnection,
    )
    from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "billing_contracts.client needs aio-pika: pip install 'billing-contracts[client]'"
    ) from missing

from billing_contracts import names
from billing_contracts.area_events import InvoiceEvent, SubscriptionEvent
from billing_contracts.catalog import EVENT_MODELS
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
from billing_contracts.envelope import EventEnvelope
from billing_contracts.events import (
    BalanceLow,
    DepositCompleted,
    PaymentFailed,
    PaymentSucceeded,
    WithdrawalCompleted,
)
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceLineIn,
    InvoiceOut,
    InvoicePage,
    PayInvoice,
)
from billing_contracts.money import Money
from billing_contracts.plans import Interval, ListPlans, PlanList, PlanOut, UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    PaymentSource,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
)
from billing_contracts.wallet import (
    BalanceResult,
    Deposit,
    DepositResult,
    GetBalance,
    ListTransactions,
    Provider,
    TransactionPage,
    Withdraw,
    WithdrawResult,
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

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_TIMEOUT = 10.0
DEFAULT_PREFETCH = 32
DEFAULT_DEDUPE_SIZE = 10_000

EventData = (
    DepositCompleted
    | WithdrawalCompleted
    | PaymentSucceeded
    | PaymentFailed
    | BalanceLow
    | SubscriptionEvent
    | InvoiceEvent
    | dict[str, Any]
)
"""An event's `data`: the typed model of its type, or a dict for a type without one."""

Event = EventEnvelope[EventData]


def parse_event(body: bytes | str) -> Event:
    """An event envelope with `data` as the model of its type (a dict for other types).

    Raises pydantic's `ValidationError` when the body is not an event envelope or its
    data does not fit the model of its type.
    """
    raw = EventEnvelope[dict[str, Any]].model_validate_json(body)
    model = EVENT_MODELS.get(raw.type)
    data: EventData = raw.data if model is None else model.model_validate(raw.data)  # type: ignore[assignment]
    return EventEnvelope[EventData].model_construct(
        event_id=raw.event_id,
        type=raw.type,
        occurred_at=raw.occurred_at,
        version=raw.version,
        data=data,
    )


class BillingClient:
    """Typed RPC calls to billing-worker over one RabbitMQ connection.

    Use it as `async with BillingClient(url) as billing:` or
    `billing = await BillingClient.connect(url)` ... `await billing.close()`.
    `timeout` (seconds) is the default of every call; each method takes its own
    `timeout=` too. `prefetch` is the default number of unacknowledged events an
    `events()` stream holds.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefetch: int = DEFAULT_PREFETCH,
        connection_name: str = "billing-client",
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.url = url
        # The login RabbitMQ validates every request's user_id against (aio-pika logs
        # in as guest when the URL names no user).
        self.user_id = unquote(urlsplit(url).username or "") or "guest"
        self.timeout = timeout
        self.prefetch = prefetch
        self.connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._replies_ready = asyncio.Event()
        self._streams: set[EventStream] = set()
        self._closing = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefetch: int = DEFAULT_PREFETCH,
        connection_name: str = "billing-client",
    ) -> BillingClient:
        """A connected client; close it with `await client.close()`."""
        client = cls(url, timeout=timeout, prefetch=prefetch, connection_name=connection_name)
        await client.open()
        return client

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        """Calls waiting for their reply right now."""
        return len(self._pending)

    async def open(self) -> None:
        """Connect, open the request channel and start consuming direct replies."""
        if self._connection is not None:
            raise RuntimeError("the client is open already")
        self._closing = False
        self._replies_ready.clear()
        try:
            async with asyncio.timeout(self.timeout):
                self._connection = await aio_pika.connect_robust(
                    self.url,
                    timeout=self.timeout,
                    client_properties={"connection_name": self.connection_name},
                )
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                channel.close_callbacks.add(self._on_channel_closed)
                channel.reopen_callbacks.add(self._on_channel_reopened)
                self._channel = channel
                await self._consume_replies()
        except (AMQPError, OSError, TimeoutError) as error:
            await self.close()
            raise BillingUnavailable(f"cannot reach RabbitMQ: {error!r}") from error

    async def close(self) -> None:
        """Close the event streams and the connection; pending calls fail at once."""
        self._closing = True
        for stream in list(self._streams):
            await stream.close()
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await connection.close()
        self._fail_pending(BillingUnavailable("the billing client was closed"))
        self._replies_ready.set()  # wake calls waiting to publish: they find the client closed

    # -- RPC ---------------------------------------------------------------------------

    async def _consume_replies(self) -> None:
        assert self._channel is not None
        queue = await self._channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        await queue.consume(self._on_reply, no_ack=True)
        self._replies_ready.set()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.debug("a reply nobody waits for (late, after its timeout): %s", message)
            return
        future.set_result(message.body)

    def _on_channel_closed(self, _channel: Any, _reason: BaseException | None = None) -> None:
        # Direct replies are bound to the channel: whatever was in flight is lost.
        self._replies_ready.clear()
        if self._closing:
            self._fail_pending(BillingUnavailable("the billing client was closed"))
        else:
            self._fail_pending(
                BillingTimeout(
                    "the connection to RabbitMQ was lost before the reply came; the outcome "
                    "is unknown: retry with the same idempotency_key"
                )
            )

    async def _on_channel_reopened(self, _channel: Any) -> None:
        if not self._closing:
            await self._consume_replies()

    def _fail_pending(self, error: BillingError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def request(
        self,
        queue: str,
        message: BaseModel,
        reply: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        """Send `message` to `queue` and return the reply's data as `reply`.

        The generic call under every method; raises the `BillingError` of an error reply,
        `BillingTimeout` when no reply came within `timeout` seconds (the client's default
        when None) and `BillingUnavailable` when the broker refused the message.
        """
        if self._channel is None:
            raise BillingUnavailable("the billing client is not open")
        body = message.model_dump_json(exclude_none=True).encode()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await self._publish(queue, body, correlation_id)
                raw = await future
        except BillingError:
            raise
        except TimeoutError:
            raise BillingTimeout(
                f"no reply from {queue} within {limit:g}s; the outcome is unknown: "
                "retry with the same idempotency_key",
                details={"queue": queue, "correlation_id": correlation_id},
            ) from None
        finally:
            self._pending.pop(correlation_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure set while we were not awaiting it
        return parse_reply(raw, reply)

    async def _publish(self, queue: str, body: bytes, correlation_id: str) -> None:
        await self._replies_ready.wait()  # after a reconnection: consume before publishing
        channel = self._channel
        if channel is None:
            raise BillingUnavailable("the billing client was closed")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=correlation_id,
            reply_to=DIRECT_REPLY_TO,
            app_id=self.connection_name,
            user_id=self.user_id,
        )
        try:
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
        except PublishError:
            raise BillingUnavailable(
                f"no queue {queue!r} on this vhost: has the billing worker declared its topology?",
                details={"queue": queue},
            ) from None
        except DeliveryError:
            raise BillingUnavailable(
                f"RabbitMQ refused the message to {queue}", details={"queue": queue}
            ) from None
        except (AMQPError, ConnectionError, RuntimeError) as error:
            raise BillingUnavailable(
                f"could not publish to {queue}: {error!r}", details={"queue": queue}
            ) from error

    # -- wallet ------------------------------------------------------------------------

    async def deposit(
        self,
        *,
        user_id: str,
        amount: Money,
        idempotency_key: str,
        provider: Provider | str | None = None,
        payment_method_id: str | None = None,
        return_url: str | None = None,
        timeout: float | None = None,
    ) -> DepositResult:
        """`billing.wallet.deposit`: the transaction is `processing` until the provider
        confirms; `deposit.completed` follows. Errors: `ProviderError`."""
        command = Deposit(
            idempotency_key=idempotency_key,
            user_id=user_id,
            amount=amount,
            provider=provider,
            payment_method_id=payment_method_id,
            return_url=return_url,
        )
        return await self.request(names.WALLET_DEPOSIT, command, DepositResult, timeout=timeout)

    async def withdraw(
        self,
        *,
        user_id: str,
        amount: Money,
        description: str,
        idempotency_key: str,
        reference: str | None = None,
        timeout: float | None = None,
    ) -> WithdrawResult:
        """`billing.wallet.withdraw`. Errors: `InsufficientFunds` (`.balance`)."""
        command = Withdraw(
            idempotency_key=idempotency_key,
            user_id=user_id,
            amount=amount,
            description=description,
            reference=reference,
        )
        return await self.request(names.WALLET_WITHDRAW, command, WithdrawResult, timeout=timeout)

    async def balance(
        self, *, user_id: str, currency: str | None = None, timeout: float | None = None
    ) -> BalanceResult:
        """`billing.wallet.balance`: one account per currency (none before a deposit)."""
        query = GetBalance(user_id=user_id, currency=currency)
        return await self.request(names.WALLET_BALANCE, query, BalanceResult, timeout=timeout)

    async def transactions(
        self,
        *,
        user_id: str,
        currency: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> TransactionPage:
        """`billing.wallet.transactions`: newest first; pass `next_cursor` for the next page."""
        query = ListTransactions(user_id=user_id, currency=currency, limit=limit, cursor=cursor)
        return await self.request(
            names.WALLET_TRANSACTIONS, query, TransactionPage, timeout=timeout
        )

    # -- plans and subscriptions -------------------------------------------------------

    async def upsert_plan(
        self,
        *,
        code: str,
        name: str,
        price: Money,
        interval: Interval | str,
        idempotency_key: str,
        interval_count: int = 1,
        trial_days: int = 0,
        stripe_price_id: str | None = None,
        active: bool = True,
        timeout: float | None = None,
    ) -> PlanOut:
        """`billing.plan.upsert`: create the plan `code` or replace its terms."""
        command = UpsertPlan(
            idempotency_key=idempotency_key,
            code=code,
            name=name,
            price=price,
            interval=interval,
            interval_count=interval_count,
            trial_days=trial_days,
            stripe_price_id=stripe_price_id,
            active=active,
        )
        return await self.request(names.PLAN_UPSERT, command, PlanOut, timeout=timeout)

    async def list_plans(
        self, *, active_only: bool = True, timeout: float | None = None
    ) -> PlanList:
        """`billing.plan.list`."""
        query = ListPlans(active_only=active_only)
        return await self.request(names.PLAN_LIST, query, PlanList, timeout=timeout)

    async def create_subscription(
        self,
        *,
        user_id: str,
        plan_code: str,
        payment_source: PaymentSource | str,
        idempotency_key: str,
        email: str | None = None,
        payment_method_id: str | None = None,
        return_url: str | None = None,
        timeout: float | None = None,
    ) -> SubscriptionCreated:
        """`billing.subscription.create`. Errors: `NotFound` (no active plan),
        `InsufficientFunds` (balance), `InvalidState` (already subscribed), `ProviderError`."""
        command = CreateSubscription(
            idempotency_key=idempotency_key,
            user_id=user_id,
            email=email,
            plan_code=plan_code,
            payment_source=payment_source,
            payment_method_id=payment_method_id,
            return_url=return_url,
        )
        return await self.request(
            names.SUBSCRIPTION_CREATE, command, SubscriptionCreated, timeout=timeout
        )

    async def cancel_subscription(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        idempotency_key: str,
        at_period_end: bool = True,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """`billing.subscription.cancel` of one of the user's subscriptions. Errors:
        `NotFound` (no such subscription of this user), `InvalidState` (ended)."""
        command = CancelSubscription(
            idempotency_key=idempotency_key,
            user_id=user_id,
            subscription_id=subscription_id,
            at_period_end=at_period_end,
            reason=reason,
        )
        return await self.request(
            names.SUBSCRIPTION_CANCEL, command, SubscriptionOut, timeout=timeout
        )

    async def get_subscription(
        self, *, user_id: str, subscription_id: UUID | str, timeout: float | None = None
    ) -> SubscriptionOut:
        """`billing.subscription.get` by id. Errors: `NotFound` (also another user's)."""
        query = GetSubscriptions(user_id=user_id, subscription_id=subscription_id)
        return await self.request(names.SUBSCRIPTION_GET, query, SubscriptionOut, timeout=timeout)

    async def list_subscriptions(
        self, *, user_id: str, timeout: float | None = None
    ) -> SubscriptionList:
        """`billing.subscription.get` by user: all of the user's subscriptions."""
        query = GetSubscriptions(user_id=user_id)
        return await self.request(names.SUBSCRIPTION_GET, query, SubscriptionList, timeout=timeout)

    # -- invoices ----------------------------------------------------------------------

    async def create_invoice(
        self,
        *,
        user_id: str,
        currency: str,
        lines: Sequence[InvoiceLineIn],
        idempotency_key: str,
        due_at: datetime | None = None,
        order_id: str | None = None,
        timeout: float | None = None,
    ) -> InvoiceOut:
        """`billing.invoice.create`: an `open` invoice with its number. Errors:
        `CurrencyMismatch`, `InvalidState` (the order has an invoice already)."""
        command = CreateInvoice(
            idempotency_key=idempotency_key,
            user_id=user_id,
            currency=currency,
            lines=list(lines),
            due_at=due_at,
            order_id=order_id,
        )
        return await self.request(names.INVOICE_CREATE, command, InvoiceOut, timeout=timeout)

    async def pay_invoice(
        self,
        *,
        user_id: str,
        invoice_id: UUID | str,
        idempotency_key: str,
        source: Literal["balance"] = "balance",
        timeout: float | None = None,
    ) -> InvoiceOut:
        """`billing.invoice.pay` of one of the user's invoices from the user's balance.
        Errors: `NotFound` (no such invoice of this user), `InsufficientFunds` (the invoice
        stays open), `InvalidState` (not open)."""
        command = PayInvoice(
            idempotency_key=idempotency_key, user_id=user_id, invoice_id=invoice_id, source=source
        )
        return await self.request(names.INVOICE_PAY, command, InvoiceOut, timeout=timeout)

    async def get_invoice(
        self, *, user_id: str, invoice_id: UUID | str, timeout: float | None = None
    ) -> InvoiceOut:
        """`billing.invoice.get` by id. Errors: `NotFound` (also another user's)."""
        query = GetInvoices(user_id=user_id, invoice_id=invoice_id)
        return await self.request(names.INVOICE_GET, query, InvoiceOut, timeout=timeout)

    async def list_invoices(
        self,
        *,
        user_id: str,
        limit: int = 20,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> InvoicePage:
        """`billing.invoice.get` by user: newest first; pass `next_cursor` for more."""
        query = GetInvoices(user_id=user_id, limit=limit, cursor=cursor)
        return await self.request(names.INVOICE_GET, query, InvoicePage, timeout=timeout)

    # -- events ------------------------------------------------------------------------

    def events(
        self,
        *types: str,
        queue: str | None = None,
        prefetch: int | None = None,
        auto_ack: bool = True,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        queue_arguments: Mapping[str, Any] | None = None,
    ) -> EventStream:
        """A stream of the events of `types` (routing keys; `*` and `#` work) on
        `billing.events`:

            async with billing.events("deposit.completed", queue="shop.billing") as stream:
                async for event in stream:
                    ...  # event.data is a DepositCompleted

        With `queue` the stream consumes that durable queue (declared if missing, with
        `queue_arguments`, e.g. `{"x-queue-type": "quorum"}`), so events published while
        you are away wait for you; without one it uses an exclusive queue that lives as
        long as the stream. Bindings are added, never removed.

        With `auto_ack` an event is acknowledged when the loop body returns (the next
        iteration, or leaving the `async with` normally); an exception out of the body
        returns it to the queue. With `auto_ack=False` call `stream.ack(event)` /
        `stream.reject(event)`.

        Delivery is at least once. The stream skips an event whose `event_id` it has
        handled already, remembering the last `dedupe_size` ids in memory; that covers
        redeliveries while it runs, not across restarts or replicas, so a durable
        consumer should also dedupe on `event_id` in its own store, in the transaction
        that applies the event.
        """
        if not types:
            raise ValueError("name at least one event type (routing key), e.g. '#' for all")
        return EventStream(
            self,
            types,
            queue=queue,
            prefetch=self.prefetch if prefetch is None else prefetch,
            auto_ack=auto_ack,
            dedupe_size=dedupe_size,
            queue_arguments=queue_arguments,
        )

    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BillingUnavailable("the billing client is not open")
        return self._connection


class _Seen:
    """A bounded set of event ids, least recently seen evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[UUID, None] = OrderedDict()

    def __contains__(self, event_id: UUID) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        return False

    def add(self, event_id: UUID) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


_CLOSED: Any = object()


class EventStream:
    """Typed events of `billing.events`; see `BillingClient.events`."""

    def __init__(
        self,
        client: BillingClient,
        types: Sequence[str],
        *,
        queue: str | None,
        prefetch: int,
        auto_ack: bool,
        dedupe_size: int,
        queue_arguments: Mapping[str, Any] | None,
    ) -> None:
        if prefetch < 1 or dedupe_size < 1:
            raise ValueError("prefetch and dedupe_size must be at least 1")
        self._client = client
        self.types = tuple(types)
        self.queue_name = queue
        self.prefetch = prefetch
        self.auto_ack = auto_ack
        self._queue_arguments = dict(queue_arguments or {})
        self._seen = _Seen(dedupe_size)
        self._in_flight: dict[UUID, AbstractIncomingMessage] = {}
        self._current: UUID | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._closed = False
        self.skipped_duplicates = 0
        self.rejected_malformed = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.auto_ack and self._current is not None:
            current = self._current
            if exc_type is None:
                await self._ack(current)
            else:
                await self._reject(current, requeue=True)
        await self.close()

    async def open(self) -> None:
        """Declare and bind the queue, then start consuming."""
        connection = self._client._require_connection()
        try:
            channel = await connection.channel(publisher_confirms=False)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.prefetch)
            exchange = await channel.declare_exchange(
                names.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            if self.queue_name is None:
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            else:
                queue = await channel.declare_queue(
                    self.queue_name, durable=True, arguments=self._queue_arguments or None
                )
            self.queue_name = queue.name
            for routing_key in self.types:
                await queue.bind(exchange, routing_key=routing_key)
            await queue.consume(self._on_message)
        except AMQPError as error:
            await self.close()
            raise BillingUnavailable(f"cannot consume billing events: {error!r}") from error
        self._client._streams.add(self)

    async def close(self) -> None:
        """Stop consuming; unacknowledged events go back to the queue."""
        if self._closed:
            return
        self._closed = True
        self._client._streams.discard(self)
        self._buffer.put_nowait(_CLOSED)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except (AMQPError, ConnectionError, RuntimeError):
                log.debug("closing the events channel failed", exc_info=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self._buffer.put(message)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self.auto_ack and self._current is not None:
            await self._ack(self._current)
        while True:
            message = await self._buffer.get()
            if message is _CLOSED:
                self._buffer.put_nowait(_CLOSED)
                raise StopAsyncIteration
            event = await self._accept(message)
            if event is not None:
                if self.auto_ack:
                    self._current = event.event_id
                return event

    async def _accept(self, message: AbstractIncomingMessage) -> Event | None:
        try:
            event = parse_event(message.body)
        except ValidationError as invalid:
            self.rejected_malformed += 1
            log.warning(
                "rejecting a malformed event (message_id %s, routing key %s): %s",
                message.message_id, message.routing_key, invalid.errors(include_input=False),
            )  # fmt: skip
            await _settle(message.reject(requeue=False))
            return None
        if event.event_id in self._seen or event.event_id in self._in_flight:
            self.skipped_duplicates += 1
            log.debug("skipping duplicate event %s (%s)", event.event_id, event.type)
            await _settle(message.ack())
            return None
        self._in_flight[event.event_id] = message
        return event

    async def ack(self, event: Event) -> None:
        """Acknowledge `event` (manual mode): it is done and will be skipped if it comes again."""
        await self._ack(event.event_id)

    async def reject(self, event: Event, *, requeue: bool = True) -> None:
        """Give `event` back (manual mode): to the queue, or dead-letter it with `requeue=False`."""
        await self._reject(event.event_id, requeue=requeue)

    async def _ack(self, event_id: UUID) -> None:
        if event_id == self._current:
            self._current = None
        message = self._in_flight.pop(event_id, None)
        if message is None:
            return
        self._seen.add(event_id)  # even if the ack is lost: a redelivery is then skipped
        await _settle(message.ack())

    async def _reject(self, event_id: UUID, *, requeue: bool) -> None:
        if event_id == self._current:
            self._current = None
        message = self._in_flight.pop(event_id, None)
        if message is not None:
            await _settle(message.reject(requeue=requeue))


async def _settle(settling: Awaitable[Any]) -> None:
    """Ack/reject, tolerating a channel that closed meanwhile (the broker redelivers)."""
    try:
        await settling
    except (AMQPError, ConnectionError, RuntimeError):
        log.debug("could not settle an event; it will be redelivered", exc_info=True)
