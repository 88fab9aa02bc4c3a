"""The generic RPC call of the client: publish a request, await its reply by correlation id.

Every request is persistent JSON on the default exchange, published `mandatory` with
publisher confirms, `reply_to` the direct reply-to and `user_id` the connection's login.

Tracing: each request is published in a PRODUCER span of the OpenTelemetry API
(`<queue> publish`), whose W3C trace context goes in the `traceparent`/`tracestate`
headers; the worker continues that trace. Without an SDK configured by the caller the
API is a no-op: no span is recorded and no header sent.
"""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from billing_contracts.client.connection import DIRECT_REPLY_TO, Connection
from billing_contracts.client_errors import (
    BillingError,
    BillingTimeout,
    BillingUnavailable,
    parse_reply,
)

R = TypeVar("R", bound=BaseModel)

_tracer = trace.get_tracer("billing_contracts.client")  # follows the global provider


class RpcClient(Connection):
    """`request()` over the connection; the typed methods of `BillingClient` call it."""

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
        with _tracer.start_as_current_span(
            f"{queue} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": queue,
                "messaging.message.conversation_id": correlation_id,
            },
        ):
            headers: dict[str, Any] = {}
            inject(headers)  # W3C traceparent/tracestate of this span; none without a tracer
            message = aio_pika.Message(
                body,
                headers=headers or None,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=correlation_id,
                reply_to=DIRECT_REPLY_TO,
                app_id=self.connection_name,
                user_id=self.user_id,
            )
            await self._send(channel, queue, message)

    async def _send(
        self, channel: AbstractRobustChannel, queue: str, message: aio_pika.Message
    ) -> None:
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
