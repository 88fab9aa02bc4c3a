"""A load-generating AMQP client that survives broker restarts and honours the client
contract: a command without an answer is sent again with the SAME idempotency key and
payload until it gets one.

It records everything the invariant checks need: every reply per key, every event seen
on `billing.events` (through a durable queue of its own, so nothing published while the
client was reconnecting is missed) and every dead letter (through a queue of its own
bound to `billing.dlx`, leaving `billing.dead-letter` alone).

It acknowledges each message only after recording it. With automatic acknowledgement a
message the broker had already written to the socket when a connection dropped would be
gone for good, and a fault test would see an event "lost" that the worker did publish.
A message that comes back after such a drop (`redelivered`, a `message_id` already
recorded) is acknowledged and not recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from billing_contracts import names
from billing_worker.messaging.connection import FailoverConnection
from billing_worker.settings import split_urls

Reply = dict[str, Any]


@dataclass
class Sent:
    queue: str
    key: str  # the idempotency key, also the correlation id
    body: bytes
    exchange: str = ""
    sends: int = 0  # publishes the broker confirmed
    unconfirmed: int = 0  # publishes that failed or timed out: may have reached it or not
    last_sent: float = 0.0  # monotonic; 0 = never reached the broker


@dataclass
class Event:
    routing_key: str
    message_id: str | None
    body: dict[str, Any]


@dataclass
class DeadLetter:
    routing_key: str
    correlation_id: str | None
    headers: dict[str, Any]
    body: bytes
    message_id: str | None = None


def is_final(reply: Reply) -> bool:
    """An answer the client keeps; `internal_error` means "gave up, try again later"."""
    return bool(reply.get("ok")) or reply.get("error", {}).get("code") != "internal_error"


@dataclass
class LoadClient:
    url: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sent: dict[str, Sent] = field(default_factory=dict)
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    resent: int = 0
    publish_failures: int = 0
    reconnects: int = 0
    quorum: bool = False
    user_id: str | None = None  # set: every message carries it (privileged queues want one)

    def __post_init__(self) -> None:
        self._connection: AbstractRobustConnection | None = None
        self._changed = asyncio.Event()
        self._recorded: set[tuple[str | None, str | None, str | None]] = set()

    # ------------------------------------------------------------------ plumbing

    async def start(self) -> None:
        urls = split_urls(self.url)  # several: a cluster's nodes, failed over between
        self._connection = await aio_pika.connect_robust(
            urls[0],
            reconnect_interval=0.5,
            connection_class=partial(FailoverConnection, urls=urls),
        )
        self._connection.reconnect_callbacks.add(self._reconnected)
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        # The worker declares these too, with the same arguments; whoever comes first wins.
        events = await channel.declare_exchange(
            names.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dlx = await channel.declare_exchange(
            names.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        # Durable queues of our own: they survive a broker restart with what was routed to
        # them while we were reconnecting (the vhost is deleted after the test).
        # With `quorum` (a cluster), quorum queues: they outlive the node they were made on.
        arguments = {"x-queue-type": "quorum"} if self.quorum else None
        self._replies = await channel.declare_queue(
            f"faults.{self.tag}.replies", durable=True, arguments=arguments
        )
        await self._replies.consume(partial(self._record, self._on_reply))
        event_queue = await channel.declare_queue(
            f"faults.{self.tag}.events", durable=True, arguments=arguments
        )
        await event_queue.bind(events, routing_key="#")
        await event_queue.consume(partial(self._record, self._on_event))
        dead = await channel.declare_queue(
            f"faults.{self.tag}.dead-letters", durable=True, arguments=arguments
        )
        await dead.bind(dlx, routing_key="#")
        await dead.consume(partial(self._record, self._on_dead_letter))

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    def _reconnected(self, *_: Any) -> None:
        self.reconnects += 1

    async def _record(
        self,
        handle: Callable[[AbstractIncomingMessage], None],
        message: AbstractIncomingMessage,
    ) -> None:
        """Record, then acknowledge; a redelivered copy of a recorded message only acks."""
        seen = (message.routing_key, message.message_id, message.correlation_id)
        if not (message.redelivered and message.message_id and seen in self._recorded):
            handle(message)
            if message.message_id:
                self._recorded.add(seen)
            self._changed.set()
        # The channel may be gone already: then the broker redelivers, and the line above
        # recognises the copy.
        with contextlib.suppress(Exception):
            await message.ack()

    def _on_reply(self, message: AbstractIncomingMessage) -> None:
        key = message.correlation_id or ""
        reply = json.loads(message.body)
        self.replies.setdefault(key, []).append(reply)

    def _on_event(self, message: AbstractIncomingMessage) -> None:
        self.events.append(
            Event(message.routing_key or "", message.message_id, json.loads(message.body))
        )

    def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        self.dead_letters.append(
            DeadLetter(
                message.routing_key or "",
                message.correlation_id,
                dict(message.headers or {}),
                message.body,
                message.message_id,
            )
        )

    # ------------------------------------------------------------------ sending

    async def _publish(self, item: Sent, *, reply: bool = True, headers: Any = None) -> bool:
        message = aio_pika.Message(
            item.body,
            content_type="application/json",
            correlation_id=item.key,
            reply_to=self._replies.name if reply else None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
            user_id=self.user_id,
        )
        try:
            exchange = (
                self._channel.default_exchange
                if not item.exchange
                else await self._channel.get_exchange(item.exchange, ensure=False)
            )
            await asyncio.wait_for(exchange.publish(message, routing_key=item.queue), 10)
        except Exception:  # broker away or slow: the resend loop tries again
            self.publish_failures += 1
            item.unconfirmed += 1
            return False
        item.sends += 1
        item.last_sent = time.monotonic()
        return True

    async def submit(
        self, queue: str, payload: dict[str, Any] | bytes, key: str | None = None
    ) -> str:
        """Send a command (or query) expecting a reply; `key` defaults to its idempotency key."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if key is None:
            assert isinstance(payload, dict)
            key = str(payload.get("idempotency_key") or uuid.uuid4().hex)
        assert key not in self.sent, f"key {key} submitted twice"
        item = Sent(queue, key, body)
        self.sent[key] = item
        await self._publish(item)
        return key

    async def resend(self, key: str) -> bool:
        """Send a command again, as a client does after a timeout: same key, same body."""
        sent = await self._publish(self.sent[key])
        self.resent += sent
        return sent

    async def resend_until_sent(self, key: str, timeout: float = 120) -> None:
        """`resend`, trying again until the broker confirmed this copy: a test that needs
        N copies delivered cannot count one whose publish timed out on a busy machine."""
        deadline = time.monotonic() + timeout
        while not await self.resend(key):
            assert time.monotonic() < deadline, f"could not send {key} again"
            await asyncio.sleep(0.2)

    async def fire(
        self, queue: str, body: bytes, *, exchange: str = "", headers: Any = None
    ) -> str:
        """Send without `reply_to` (events such as order.created, provider callbacks)."""
        item = Sent(queue, uuid.uuid4().hex, body, exchange=exchange)
        ok = await self._publish(item, reply=False, headers=headers)
        assert ok, "could not publish"
        return item.key

    async def fire_until_sent(
        self, queue: str, body: bytes, *, exchange: str = "", timeout: float = 120
    ) -> str:
        """`fire`, as a publisher that retries until the broker confirmed (a failover)."""
        item = Sent(queue, uuid.uuid4().hex, body, exchange=exchange)
        deadline = time.monotonic() + timeout
        while not await self._publish(item, reply=False):
            assert time.monotonic() < deadline, f"could not publish to {queue}"
            await asyncio.sleep(0.5)
        return item.key

    async def call(self, queue: str, payload: dict[str, Any], timeout: float = 30) -> Reply:
        key = await self.submit(queue, payload)
        return await self.wait(key, timeout)

    async def wait(self, key: str, timeout: float = 30, *, final: bool = True) -> Reply:
        """The first final reply to `key` (with `final=False`: the first reply of any kind,
        `internal_error` included)."""
        if final:
            await self.wait_until(lambda: self.final(key) is not None, timeout, f"reply to {key}")
            return self.final(key)  # type: ignore[return-value]
        await self.wait_until(lambda: bool(self.replies.get(key)), timeout, f"reply to {key}")
        return self.replies[key][0]

    # ------------------------------------------------------------------ reading

    def final(self, key: str) -> Reply | None:
        return next((r for r in self.replies.get(key, ()) if is_final(r)), None)

    def unanswered(self) -> list[Sent]:
        return [item for key, item in self.sent.items() if self.final(key) is None]

    async def settle(self, timeout: float, resend_after: float = 10.0) -> None:
        """Until every command has a final answer: resend (same key, same body) whatever
        has waited `resend_after` seconds since it was last sent."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = self.unanswered()
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(waiting)} commands never answered, e.g. "
                    f"{[(w.queue, w.key, w.sends) for w in waiting[:5]]}"
                )
            now = time.monotonic()
            for item in waiting:
                if now - item.last_sent >= resend_after and await self._publish(item):
                    self.resent += 1
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    async def keep_resending(self, stop: asyncio.Event, after: float = 10.0) -> None:
        """While load runs: resend whatever has waited `after` seconds for its answer."""
        while not stop.is_set():
            now = time.monotonic()
            for item in self.unanswered():
                if now - item.last_sent >= after and await self._publish(item):
                    self.resent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def wait_until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    def reply_count(self) -> Counter[str]:
        return Counter({key: len(replies) for key, replies in self.replies.items()})

    def events_of(self, type_: str) -> list[Event]:
        return [event for event in self.events if event.routing_key == type_]

    def dead_letter_for(self, correlation_id: str) -> list[DeadLetter]:
        return [d for d in self.dead_letters if d.correlation_id == correlation_id]
