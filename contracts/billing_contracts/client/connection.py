"""The client's connection: one robust AMQP connection, one request channel with publisher
confirms, and the direct reply-to consumer on that channel that settles waiting calls.

Direct replies are bound to the channel, so when it closes whatever is in flight fails
at once (`BillingTimeout`: the outcome is unknown) and, when aio-pika reopens it, the
replies are consumed again before the next request is published.
"""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from billing_contracts.client_errors import BillingError, BillingTimeout, BillingUnavailable

log = logging.getLogger("billing_contracts.client")  # one logger for the whole client

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_TIMEOUT = 10.0
DEFAULT_PREFETCH = 32


class Closable(Protocol):
    """What the connection closes before itself: an open event stream."""

    async def close(self) -> None: ...


class Connection:
    """The connection and reply channel under `BillingClient` (see its docstring)."""

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
        self._streams: set[Closable] = set()
        self._closing = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefetch: int = DEFAULT_PREFETCH,
        connection_name: str = "billing-client",
    ) -> Self:
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

    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BillingUnavailable("the billing client is not open")
        return self._connection

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
