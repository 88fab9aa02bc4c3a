"""`billing-worker dlq list|show|replay|purge`: look into and repair the dead-letter queue.

Reading is non-destructive: messages are fetched unacknowledged and go back to the queue
when the channel closes. Replay publishes a copy to the message's original queue (with
publisher confirms, its retry counter reset) and only then removes it from the DLQ.
The copy is published as the replaying broker user and names the dead letter's
original sender in `x-billing-sender`, so the worker's access policy judges the original
sender again (when the operator replays with the worker's own user, as the CLI does).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from billing_contracts import names
from billing_worker.access import Access, broker_login
from billing_worker.ops.services import connect_amqp

_OURS = (names.REASON_HEADER, names.ORIGINAL_QUEUE_HEADER, names.ATTEMPTS_HEADER, "x-death")


@dataclass(frozen=True)
class DeadLetter:
    position: int
    message: AbstractIncomingMessage

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.message.headers or {})

    @property
    def original_queue(self) -> str:
        queue = self.headers.get(names.ORIGINAL_QUEUE_HEADER)
        if isinstance(queue, bytes):
            queue = queue.decode()
        return str(queue or self.message.routing_key or "")

    @property
    def reason(self) -> str:
        reason = self.headers.get(names.REASON_HEADER)
        if reason is None and self.headers.get("x-death"):
            death = self.headers["x-death"][0]
            return f"broker: {death.get('reason')} from {death.get('queue')}"
        return reason.decode() if isinstance(reason, bytes) else str(reason or "")

    def summary(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "queue": self.original_queue,
            "reason": self.reason,
            "message_id": self.message.message_id,
            "correlation_id": self.message.correlation_id,
            "bytes": len(self.message.body),
        }

    def details(self) -> dict[str, Any]:
        try:
            body: Any = json.loads(self.message.body)
        except ValueError:
            body = self.message.body.decode(errors="replace")
        return {
            **self.summary(),
            "headers": _plain(self.headers),
            "body": body,
            "reply_to": self.message.reply_to,
            "content_type": self.message.content_type,
        }


@asynccontextmanager
async def dead_letters(
    url: str, limit: int
) -> AsyncIterator[tuple[AbstractChannel, list[DeadLetter]]]:
    """Up to `limit` dead letters, unacknowledged: whatever is not acked goes back."""
    connection = await connect_amqp(url)  # unreachable: a one-line CommandError
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.get_queue(names.DEAD_LETTER_QUEUE, ensure=True)
        letters = []
        for position in range(1, limit + 1):
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            letters.append(DeadLetter(position, message))
        yield channel, letters
    finally:
        await connection.close()


async def replay(
    url: str, limit: int, select: Callable[[DeadLetter], bool]
) -> list[dict[str, Any]]:
    """Send the selected dead letters back to their queues; returns what was replayed."""
    replayed = []
    access = Access(broker_login(url))
    async with dead_letters(url, limit) as (channel, letters):
        for letter in letters:
            if not select(letter) or not letter.original_queue:
                continue
            message = letter.message
            headers = {k: v for k, v in letter.headers.items() if k not in _OURS}
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers={**headers, **access.copy_headers(message.user_id, letter.headers)},
                    user_id=access.worker_user,
                    content_type=message.content_type,
                    correlation_id=message.correlation_id,
                    reply_to=message.reply_to,
                    message_id=message.message_id,
                    type=message.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=letter.original_queue,
            )  # confirmed before we let go of the dead letter
            await message.ack()
            replayed.append(letter.summary())
    return replayed


NEAR_FULL = 0.8  # `dlq list` warns from this share of BILLING_DEAD_LETTER_MAX


async def depth(url: str) -> int:
    """How many dead letters the queue holds (RabbitMQ's count, without reading them)."""
    connection = await connect_amqp(url)  # unreachable: a one-line CommandError
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(names.DEAD_LETTER_QUEUE, ensure=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


def fullness_warning(count: int, limit: int) -> str | None:
    """The warning of a DLQ at NEAR_FULL of its bound or more (None below it)."""
    if count < NEAR_FULL * limit:
        return None
    return (
        f"warning: {names.DEAD_LETTER_QUEUE} holds {count} dead letters, {count * 100 // limit}% "
        f"of BILLING_DEAD_LETTER_MAX={limit}; when it is full the oldest are dropped: "
        "replay or purge them"
    )


async def purge(url: str) -> int:
    connection = await connect_amqp(url)  # unreachable: a one-line CommandError
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(names.DEAD_LETTER_QUEUE, ensure=True)
        result = await queue.purge()
        return int(result.message_count or 0)
    finally:
        await connection.close()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
