"""`BillingClient.events()`: a typed, deduplicating consumer of `billing.events`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError
from pydantic import ValidationError

from billing_contracts import names
from billing_contracts.client.connection import Connection
from billing_contracts.client.events import Event, Seen, parse_event
from billing_contracts.client_errors import BillingUnavailable

log = logging.getLogger("billing_contracts.client")  # one logger for the whole client

DEFAULT_DEDUPE_SIZE = 10_000


class EventCalls(Connection):
    """`events()` of `BillingClient`."""

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


_CLOSED: Any = object()


class EventStream:
    """Typed events of `billing.events`; see `BillingClient.events`."""

    def __init__(
        self,
        client: Connection,
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
        self._seen = Seen(dedupe_size)
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
