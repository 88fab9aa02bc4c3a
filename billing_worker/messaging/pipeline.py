"""The error policy of every subscriber: validate, handle, reply, then acknowledge.

- With the access policy on, a message whose validated sender (AMQP `user_id`, see
  billing_worker/access.py) may not send to its queue gets a `forbidden` reply and is
  dead-lettered unread; it is never handled nor retried.
- A body that is not JSON or fails its contract (billing_worker/messaging/parsing.py)
  gets an `invalid_message` reply (when the caller set `reply_to`) and is dead-lettered
  with the reason; it is never retried.
- A handler failure (database or provider down, a bug) is retried through a delay queue
  with back-off, counting deliveries in our own header (classic queues count nothing,
  and quorum queues count differently across RabbitMQ versions); after
  `max_deliveries` attempts it is dead-lettered and the caller gets `internal_error`.
- Business refusals are ordinary replies produced by the handler.
- A NestJS packet `{pattern, data, id}` (billing_worker/messaging/nestjs.py) on a queue
  that accepts one is its `data`, and every reply to it goes back in NestJS's shape.
The message is acknowledged only after its reply / retry copy / dead letter was
confirmed by the broker, so a crash at any point means a redelivery, never a loss.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import BaseModel

from billing_contracts import names
from billing_contracts.envelope import ErrorCode
from billing_worker.access import DEFAULT_LOGIN, Access
from billing_worker.domain.errors import TransientError, Unprocessable
from billing_worker.messaging import nestjs
from billing_worker.messaging.acks import Acks
from billing_worker.messaging.parsing import (
    MAX_BODY_BYTES,
    InvalidMessage,
    Parser,
    parse_payload,
    user_id_of,
)
from billing_worker.messaging.topology import Topology
from billing_worker.metrics import Metrics
from billing_worker.redaction import failure_reason
from billing_worker.replies import error

log = logging.getLogger(__name__)

# Failures that need no traceback in the log: the reason says it all.
EXPECTED_FAILURES = (TransientError, OSError, TimeoutError)

Handle = Callable[[Any], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Route:
    queue: str
    parse: Parser
    handle: Handle  # returns the reply envelope, or None when there is nothing to reply
    # For the AsyncAPI document: the contract of the body and of the reply.
    model: type[BaseModel] | None = None
    reply: Any = None
    description: str = ""
    # The NestJS patterns this queue answers to (see nestjs.py); none: no packets here.
    patterns: frozenset[str] = frozenset()
    coalescer: Any = None  # the Coalescer its commands go through, if any (watched)
    with_sender: bool = False  # `handle` gets a `Sent`: the payload and who sent it


@dataclass(frozen=True, slots=True)
class Sent:
    """A payload and its sender: the broker-validated AMQP user id (`Access.sender`)."""

    payload: Any
    sender: str | None


def attempt_of(message: AbstractIncomingMessage) -> int:
    raw = (message.headers or {}).get(names.ATTEMPTS_HEADER, 1)
    return max(1, raw) if isinstance(raw, int) else 1


class Pipeline:
    def __init__(
        self,
        broker: RabbitBroker,
        topology: Topology,
        max_deliveries: int,
        metrics: Metrics | None = None,
        access: Access | None = None,
    ) -> None:
        self.broker = broker
        self.topology = topology
        self.max_deliveries = max_deliveries
        self.metrics = metrics or Metrics()
        # The worker's own broker user: every message it publishes carries it as user_id.
        self.access = access or Access(DEFAULT_LOGIN)
        self.acks = Acks()  # batched per channel: few basic.ack frames (messaging/acks.py)

    def consumer(self, route: Route) -> Callable[[RabbitMessage], Awaitable[None]]:
        """The subscriber function. FastStream hands it the raw message (the broker runs
        with `apply_types=False` and a decoder that returns the message itself); its
        annotations only describe the contract for the AsyncAPI document."""

        async def consume(message: RabbitMessage) -> None:
            await self.consume(route, message)

        consume.__name__ = consume.__qualname__ = "consume_" + route.queue.replace(".", "_")
        consume.__doc__ = route.description or None
        consume.__annotations__ = {"message": route.model or bytes, "return": route.reply}
        return consume

    async def consume(self, route: Route, message: RabbitMessage) -> None:
        raw = message.raw_message
        started = time.perf_counter()
        outcome = "ok"
        try:
            outcome = await self._consume(route, message)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.messages.labels(route.queue, outcome).observe(elapsed)
            quiet = outcome in ("ok", "refused")  # refusals are ordinary replies
            if log.isEnabledFor(logging.DEBUG) or not quiet:
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%s %s in %.1f ms", route.queue, outcome, elapsed * 1000,
                    extra=message_context(raw, route.queue, outcome, elapsed),
                )  # fmt: skip

    async def _consume(self, route: Route, message: RabbitMessage) -> str:
        raw = message.raw_message
        packet = nestjs.packet_of(raw.body, MAX_BODY_BYTES) if route.patterns else None
        refusal = self.access.refusal(route.queue, raw.user_id, raw.headers or {})
        if refusal is not None:
            log.warning("forbidden message on %s: %s", route.queue, refusal)
            await self.reply(raw, error(ErrorCode.FORBIDDEN, refusal, {}), packet)
            await self.dead_letter(raw, route.queue, f"forbidden: {refusal}")
            await self.acks.ack(raw)
            self.metrics.refused(route.queue, ErrorCode.FORBIDDEN)  # once acked: never twice
            return "forbidden"
        try:
            payload = parse_payload(route.parse, route.patterns, raw, packet)
        except InvalidMessage as invalid:
            return await self.refuse(route, message, invalid, packet)
        except Exception as crash:  # a parser bug: the body is still refused, never left unacked
            log.error("the parser of %s failed: %s", route.queue, failure_reason(crash))
            unreadable = InvalidMessage(f"unreadable body: {failure_reason(crash)}")
            return await self.refuse(route, message, unreadable, packet)
        attempt = attempt_of(raw)
        if route.with_sender:
            payload = Sent(payload, self.access.sender(raw.user_id, raw.headers or {}))
        try:
            reply = await route.handle(payload)
        except Exception as failure:  # every failure is retried, then dead-lettered
            return await self.failed(route, message, attempt, failure, packet)
        if reply is not None:
            await self.reply(raw, reply, packet)
        await self.acks.ack(message.raw_message)
        if reply is None or reply.get("ok"):
            return "ok"
        self.metrics.refused_with(route.queue, reply)  # by its code: a burst stands out
        return "refused"

    async def refuse(
        self,
        route: Route,
        message: RabbitMessage,
        invalid: InvalidMessage,
        packet: nestjs.Packet | None,
    ) -> str:
        """Answer `invalid_message`, dead-letter with the reason, acknowledge."""
        raw = message.raw_message
        log.warning("invalid message on %s: %s", route.queue, invalid.reason)
        await self.reply(
            raw,
            error(ErrorCode.INVALID_MESSAGE, invalid.reason, invalid.details),
            packet,
        )
        await self.dead_letter(raw, route.queue, f"invalid_message: {invalid.reason}")
        await self.acks.ack(message.raw_message)
        self.metrics.refused(route.queue, ErrorCode.INVALID_MESSAGE)
        return "invalid"

    async def failed(
        self,
        route: Route,
        message: RabbitMessage,
        attempt: int,
        failure: Exception,
        packet: nestjs.Packet | None = None,
    ) -> str:
        raw = message.raw_message
        reason = failure_reason(failure)  # never a database error's DETAIL (row values)
        if isinstance(failure, Unprocessable):
            log.error("dead-lettering a message of %s: %s", route.queue, reason)
            await self.reply(raw, error(ErrorCode.INTERNAL_ERROR, str(failure), {}), packet)
            await self.dead_letter(raw, route.queue, f"unprocessable: {reason}", attempt)
            outcome = "dead_lettered"
        elif attempt >= self.max_deliveries:
            log.error(
                "giving up on a message of %s after %d attempts: %s", route.queue, attempt, reason
            )
            await self.reply(
                raw,
                error(
                    ErrorCode.INTERNAL_ERROR,
                    f"the message failed {attempt} times and was dead-lettered",
                    {"attempts": attempt},
                ),
                packet,
            )
            await self.dead_letter(raw, route.queue, f"failed {attempt} times: {reason}", attempt)
            outcome = "dead_lettered"
        else:
            log.warning(
                "attempt %d of %d on %s failed, retrying: %s",
                attempt, self.max_deliveries, route.queue, reason,
                exc_info=not isinstance(failure, EXPECTED_FAILURES),
            )  # fmt: skip
            await self.republish(
                raw,
                exchange=self.topology.retry_name(attempt),
                routing_key=route.queue,
                extra_headers={names.ATTEMPTS_HEADER: attempt + 1, names.REASON_HEADER: reason},
            )
            outcome = "retried"
        await self.acks.ack(message.raw_message)
        if outcome == "dead_lettered":  # the caller got internal_error
            self.metrics.refused(route.queue, ErrorCode.INTERNAL_ERROR)
        return outcome

    async def reply(
        self,
        raw: AbstractIncomingMessage,
        body: dict[str, Any],
        packet: nestjs.Packet | None = None,
    ) -> None:
        if not raw.reply_to:
            return
        if packet is not None:  # NestJS routes its replies by correlation_id
            body = nestjs.reply(body, packet.id or raw.correlation_id)
        await self.broker.publish(
            json.dumps(body, separators=(",", ":")).encode(),
            routing_key=raw.reply_to,
            correlation_id=raw.correlation_id,
            content_type="application/json",
            user_id=self.access.worker_user,
            mandatory=False,
        )

    async def dead_letter(
        self, raw: AbstractIncomingMessage, queue: str, reason: str, attempt: int | None = None
    ) -> None:
        self.metrics.dead_letters.labels(queue, reason.split(":", 1)[0].split(" ", 1)[0]).inc()
        await self.republish(
            raw,
            exchange=names.DEAD_LETTER_EXCHANGE,
            routing_key=queue,
            extra_headers={
                names.REASON_HEADER: reason[:1000],
                names.ORIGINAL_QUEUE_HEADER: queue,
                names.ATTEMPTS_HEADER: attempt or attempt_of(raw),
            },
        )

    async def republish(
        self,
        raw: AbstractIncomingMessage,
        *,
        exchange: str,
        routing_key: str,
        extra_headers: Mapping[str, Any],
    ) -> None:
        """A persistent copy of `raw` with its properties, confirmed by the broker.

        The copy's user_id can only be the worker's own (RabbitMQ validates it), so the
        original sender travels in the sender header (see billing_worker/access.py)."""
        headers = raw.headers or {}
        await self.broker.publish(
            raw.body,
            exchange=exchange,
            routing_key=routing_key,
            headers={
                **headers,
                **extra_headers,
                **self.access.copy_headers(raw.user_id, headers),
            },
            user_id=self.access.worker_user,
            correlation_id=raw.correlation_id,
            reply_to=raw.reply_to,
            message_id=raw.message_id,
            message_type=raw.type,
            content_type=raw.content_type,
            persist=True,
            mandatory=False,
        )


def message_context(
    raw: AbstractIncomingMessage, queue: str, outcome: str, elapsed: float
) -> dict[str, Any]:
    """Structured fields of the per-message log line (JSON logs carry them as keys)."""
    return {
        "queue": queue,
        "outcome": outcome,
        "duration_ms": round(elapsed * 1000, 2),
        "correlation_id": raw.correlation_id,
        "message_id": raw.message_id,
        "user_id": user_id_of(raw.body),
    }
