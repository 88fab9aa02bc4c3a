"""The load generator: pre-fills queues, runs closed-loop RPC, collects what comes back.

It declares the two work queues exactly as the worker does (taken from the worker's own
`Topology`, so the worker's later declaration matches), a reply queue of its own and a
tap on `billing.events` for `deposit.completed` (the only sign a deposit completion
gives: it has no reply). Every completion is time-stamped on this process's clock:
withdraws by their reply (correlation id), deposits by their `deposit.completed` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from benchmarks.plan import Deposit, Plan, Withdraw, wire
from billing_contracts import names
from billing_worker.messaging.topology import Topology

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_PREFILL_BATCH = 256


@dataclass
class Observed:
    """What the load generator saw of one run: the check's view from outside."""

    replies: Counter[str] = field(default_factory=Counter)  # correlation id -> replies
    wrong_replies: list[str] = field(default_factory=list)  # refusals, someone else's reply
    unknown_replies: int = 0  # correlation ids never sent
    deposit_events: Counter[str] = field(default_factory=Counter)  # transaction id -> events
    leftovers: dict[str, int] = field(default_factory=dict)  # queue -> messages left in it


def reply_problem(command: Withdraw, body: bytes) -> str | None:
    """Why a reply is not the successful reply to `command`, or None."""
    try:
        reply = json.loads(body)
        if not reply.get("ok"):
            return f"refused: {reply.get('error', {}).get('code')}"
        transaction = reply["data"]["transaction"]
        if transaction["user_id"] != command.user_id:
            return f"reply for user {transaction['user_id']}, sent for {command.user_id}"
        if transaction["amount"]["amount"] != wire(command.amount_minor):
            return f"reply amount {transaction['amount']}, sent {wire(command.amount_minor)}"
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable reply: {error!r}"
    return None


class Load:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.observed = Observed()
        self.sent_at: dict[str, float] = {}  # completion key -> perf_counter at publish
        self.done_at: dict[str, float] = {}  # completion key -> first completion
        self.expected = 0
        self.first_done = asyncio.Event()
        self.all_done = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[None]] = {}

    async def connect(self, amqp: str) -> None:
        self.connection = await aio_pika.connect(amqp)
        self.confirmed = await self.connection.channel(publisher_confirms=True)
        self.unconfirmed = await self.connection.channel(publisher_confirms=False)
        topology = Topology(quorum=False, orders_exchange_name="orders", retry_delays_ms=(1,))
        for name in (names.WALLET_WITHDRAW, names.PROVIDER_EVENTS_QUEUE):
            declared = topology.queue_for(name)
            await self.confirmed.declare_queue(
                name, durable=True, arguments=dict(declared.arguments or {})
            )
        events = await self.confirmed.declare_exchange(
            names.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.reply_queue = await self.confirmed.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        tap = await self.confirmed.declare_queue(exclusive=True, auto_delete=True)
        await tap.bind(events, routing_key="deposit.completed")
        await tap.consume(self._on_event, no_ack=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()

    def _complete(self, key: str) -> None:
        if key in self.done_at:
            return
        self.done_at[key] = time.perf_counter()
        self.first_done.set()
        if len(self.done_at) >= self.expected:
            self.all_done.set()
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        key = message.correlation_id or ""
        command = self.plan.withdraws.get(key)
        if command is None:
            self.observed.unknown_replies += 1
            return
        self.observed.replies[key] += 1
        self._complete(key)
        problem = reply_problem(command, message.body)
        if problem is not None:
            self.observed.wrong_replies.append(f"{key}: {problem}")

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            key = str(json.loads(message.body)["data"]["transaction_id"])
            if key in self.plan.deposits:
                self.observed.deposit_events[key] += 1
                self._complete(key)

    def _withdraw_message(self, command: Withdraw) -> aio_pika.Message:
        return aio_pika.Message(
            command.body(), content_type="application/json", delivery_mode=PERSISTENT,
            correlation_id=command.key, reply_to=self.reply_queue.name,
        )  # fmt: skip

    def _deposit_message(self, deposit: Deposit) -> aio_pika.Message:
        return aio_pika.Message(
            deposit.body, content_type="application/json", delivery_mode=PERSISTENT,
            message_id=deposit.event_id,
            headers=self.plan.callback_headers(deposit),  # type: ignore[arg-type]
        )  # fmt: skip

    async def prefill(self, withdraws: int) -> None:
        """Publish `withdraws` new withdraws and every planned deposit, all confirmed."""
        outgoing: list[tuple[str, str, aio_pika.Message]] = [
            (names.PROVIDER_EVENTS_QUEUE, d.key, self._deposit_message(d))
            for d in self.plan.deposits.values()
        ]
        for _ in range(withdraws):
            command = self.plan.new_withdraw()
            outgoing.append((names.WALLET_WITHDRAW, command.key, self._withdraw_message(command)))
        self.expected += len(outgoing)
        exchange = self.confirmed.default_exchange
        for start in range(0, len(outgoing), _PREFILL_BATCH):
            batch = outgoing[start : start + _PREFILL_BATCH]
            now = time.perf_counter()
            for _, key, _ in batch:
                self.sent_at[key] = now
            await asyncio.gather(
                *(exchange.publish(message, routing_key=queue) for queue, _, message in batch)
            )

    async def call(self, patience: float) -> float:
        """One withdraw as a request/reply; returns its round trip in seconds."""
        command = self.plan.new_withdraw()
        self.expected += 1
        self.all_done.clear()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[command.key] = waiter
        started = self.sent_at[command.key] = time.perf_counter()
        await self.unconfirmed.default_exchange.publish(
            self._withdraw_message(command), routing_key=names.WALLET_WITHDRAW
        )
        try:
            await asyncio.wait_for(waiter, patience)
        except TimeoutError:
            raise TimeoutError(f"no reply to {command.key} within {patience:.0f}s") from None
        return self.done_at[command.key] - started

    async def closed_loop(self, concurrency: int, until: float, patience: float) -> None:
        """`concurrency` clients, each sending its next request when the last one returned."""

        async def client() -> None:
            while time.perf_counter() < until:
                await self.call(patience)

        clients = [asyncio.create_task(client()) for _ in range(concurrency)]
        try:
            await asyncio.gather(*clients)
        finally:  # one failed: stop the others too
            for task in clients:
                task.cancel()

    async def wait_all(self, patience: float) -> None:
        if len(self.done_at) >= self.expected:
            return
        try:
            await asyncio.wait_for(self.all_done.wait(), patience)
        except TimeoutError:
            missing = self.expected - len(self.done_at)
            raise TimeoutError(
                f"{missing} of {self.expected} commands never completed within {patience:.0f}s"
            ) from None

    async def count_leftovers(self, queues: list[str]) -> dict[str, int]:
        """Messages still in each existing queue (a queue that does not exist is skipped)."""
        self.observed.leftovers = await leftovers(self.connection, queues)
        return self.observed.leftovers


async def leftovers(connection: AbstractConnection, queues: Sequence[str]) -> dict[str, int]:
    """Messages still in each existing queue (a queue that does not exist is skipped)."""
    counts: dict[str, int] = {}
    for name in queues:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            counts[name] = int(queue.declaration_result.message_count or 0)
        except Exception:  # noqa: S112 - absent queue: nothing left in it
            continue
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
    return counts


def completions_in(load: Load, start: float, end: float) -> list[tuple[float, float]]:
    """(completion time, latency) of every completion inside [start, end]."""
    return [
        (done, done - load.sent_at[key])
        for key, done in load.done_at.items()
        if start <= done <= end and key in load.sent_at
    ]
