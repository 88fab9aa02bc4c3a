"""A minimal AMQP client for tests: RPC calls, fire-and-forget sends, event and DLQ taps.

It speaks plain aio-pika, knowing only the message catalogue: the same view another service has.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


class Tap:
    """Collects every message of a queue; tests wait for the ones they expect."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []
        self._changed = asyncio.Condition()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def wait_for(
        self, match: Callable[[AbstractIncomingMessage], bool], count: int = 1, timeout: float = 15
    ) -> list[AbstractIncomingMessage]:
        async def enough() -> list[AbstractIncomingMessage]:
            async with self._changed:
                while len(found := [m for m in self.messages if match(m)]) < count:
                    await self._changed.wait()
                return found

        return await asyncio.wait_for(enough(), timeout)

    def matching(
        self, match: Callable[[AbstractIncomingMessage], bool]
    ) -> list[AbstractIncomingMessage]:
        return [m for m in self.messages if match(m)]


def body(message: AbstractIncomingMessage) -> Any:
    return json.loads(message.body)


class Bus:
    def __init__(self, url: str, *, tap_dead_letters: bool = True) -> None:
        """`tap_dead_letters` consumes billing.dead-letter (emptying it) to collect them."""
        self.url = url
        self.tap_dead_letters = tap_dead_letters
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events = Tap()
        self.reply_counts: Counter[str] = Counter()  # every reply seen, by correlation id
        self.dead_letters = Tap()

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.replies.consume(self._on_reply, no_ack=True)
        events = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await events.bind("billing.events", routing_key="#")
        await events.consume(self.events.on_message, no_ack=True)
        if self.tap_dead_letters:
            dlq = await self.channel.get_queue("billing.dead-letter")
            await dlq.consume(self.dead_letters.on_message, no_ack=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self.reply_counts[message.correlation_id or ""] += 1
        future = self._futures.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body))

    async def send(
        self,
        queue: str,
        payload: Any,
        *,
        reply: bool = False,
        correlation_id: str | None = None,
        content_type: str = "application/json",
        headers: dict[str, Any] | None = None,
        exchange: str = "",
    ) -> str:
        correlation_id = correlation_id or uuid.uuid4().hex
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        message = aio_pika.Message(
            raw,
            content_type=content_type,
            correlation_id=correlation_id,
            reply_to=self.replies.name if reply else None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
        )
        target = (
            self.channel.default_exchange
            if not exchange
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key=queue)
        return correlation_id

    async def call(
        self, queue: str, payload: Any, *, timeout: float = 15, **options: Any
    ) -> dict[str, Any]:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[correlation_id] = future
        await self.send(queue, payload, reply=True, correlation_id=correlation_id, **options)
        return await asyncio.wait_for(future, timeout)

    async def event(
        self, type_: str, match: Callable[[dict[str, Any]], bool] = lambda _: True, **wait: Any
    ) -> dict[str, Any]:
        found = await self.events.wait_for(
            lambda m: m.routing_key == type_ and match(body(m)["data"]), **wait
        )
        return body(found[0])  # type: ignore[no-any-return]

    def events_of(
        self, type_: str, match: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> list[dict[str, Any]]:
        return [
            body(m)
            for m in self.events.messages
            if m.routing_key == type_ and match(body(m)["data"])
        ]

    async def dead_letter(self, correlation_id: str, **wait: Any) -> AbstractIncomingMessage:
        found = await self.dead_letters.wait_for(
            lambda m: m.correlation_id == correlation_id, **wait
        )
        return found[0]
