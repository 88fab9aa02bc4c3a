"""Inline outbox publishing: the events a commit wrote are published right after it,
their confirms awaited together, and the publishing loop marks them published in one
UPDATE by event id. The poll is the safety net: it takes only rows older than the grace
(the poll interval unless told), never a row this replica is publishing inline; the last
drain at shutdown waits for the inline publishes and takes the younger rows too.

The first test runs a real worker whose poll is ten minutes away; the others drive an
`OutboxPublisher` directly, with a real engine and a fake `send` (a broker's confirm),
on a database of their own (a poll takes any unpublished row it finds).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_contracts.wallet import Withdraw
from billing_worker.app import Worker
from billing_worker.db import outbox
from billing_worker.db.engine import create_engine, driver_connection
from billing_worker.db.wallet import SqlWallet
from billing_worker.handlers import wallet
from billing_worker.messaging.outbox_publisher import OutboxPublisher
from billing_worker.settings import Settings
from support.invariants import connect
from support.rpc import Bus, body
from support.settings import make_settings
from support.statements import statements

pytestmark = pytest.mark.integration

HOUR = 3600.0


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    """The worker's poll ten minutes away (and so its grace): whatever is published
    within a test was published inline."""
    return make_settings(database_url, rabbitmq_url, outbox_poll_interval_ms=600_000)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connect(database_url) as connection:
        yield connection


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


async def until(
    condition: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = 30
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# --- a real worker ---------------------------------------------------------------------------


async def test_a_commands_events_reach_the_broker_inline_with_the_poll_ten_minutes_away(
    bus: Bus, worker: Worker, db: asyncpg.Connection
) -> None:
    user = f"inline-{uuid.uuid4().hex[:8]}"
    # A sandbox deposit: its callback goes out through the outbox (to the provider-events
    # queue), is applied, and deposit.completed goes out the same way: two commits, each
    # published right after it (a command's flush with its record, a plain flush). Then a
    # withdrawal on its own (a command again).
    reply = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "sandbox",
         "amount": {"amount": "20.00", "currency": "USD"}},
    )  # fmt: skip
    assert reply["ok"], reply
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    withdrawn = await bus.call(
        "billing.wallet.withdraw",
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "inline",
         "reference": "ref-inline", "amount": {"amount": "5.00", "currency": "USD"}},
    )  # fmt: skip
    assert withdrawn["ok"], withdrawn

    rows = await db.fetch(
        "SELECT event_id, exchange, routing_key, type FROM outbox "
        "WHERE payload->'data'->>'user_id' = $1 OR payload->'data'->>'transaction_id' = $2 "
        "ORDER BY id",
        user,
        transaction_id,
    )
    types = {row["type"] for row in rows}
    # The sandbox's callback, the deposit's events, the withdrawal's.
    assert {"sandbox.callback", "deposit.completed", "payment.success",
            "withdrawal.completed"} <= types, types  # fmt: skip
    events = [row for row in rows if row["exchange"] == "billing.events"]
    sent = {str(row["event_id"]) for row in events}
    # every event reached the events exchange...
    got = await bus.events.wait_for(lambda m: m.message_id in sent, count=len(sent))
    assert {m.message_id for m in got} == sent

    async def marked() -> bool:  # ... and every row was marked published, once
        states = await db.fetch(
            "SELECT published_at IS NOT NULL AS published, attempts FROM outbox "
            "WHERE event_id = ANY($1::uuid[])",
            [row["event_id"] for row in rows],
        )
        return all(s["published"] and s["attempts"] == 1 for s in states)

    await until(marked, "the rows marked published")
    assert worker.publisher.published >= len(rows)


async def test_a_coalesced_batchs_events_reach_the_broker_inline(
    bus: Bus, worker: Worker, db: asyncpg.Connection
) -> None:
    """The batch's flush (its commands' records with the outbox rows) hands its rows over
    too."""
    tag = uuid.uuid4().hex[:8]
    users = [f"inline-batch-{tag}-{n}" for n in range(4)]
    async with driver_connection(worker.engine) as connection, connection.transaction():
        for user in users:
            await SqlWallet(connection).open_account(user, "USD")
        await connection.execute(
            "UPDATE virtual_accounts SET balance_minor = 900 WHERE user_id = ANY($1::text[])", users
        )

    replies = await worker.service.command_batch(
        "wallet.withdraw", [withdrawal(user) for user in users], wallet.withdraw,
        wallet.withdraw_many,
    )  # fmt: skip

    assert all(isinstance(r, dict) and r["ok"] for r in replies), replies
    got = await bus.events.wait_for(
        lambda m: m.routing_key == "withdrawal.completed" and body(m)["data"]["user_id"] in users,
        count=len(users),
    )
    assert sorted(body(m)["data"]["user_id"] for m in got) == sorted(users)

    async def marked() -> bool:
        states = await db.fetch(
            "SELECT published_at IS NOT NULL AS published, attempts FROM outbox "
            "WHERE payload->'data'->>'user_id' = ANY($1::text[])",
            users,
        )
        return len(states) >= len(users) and all(
            s["published"] and s["attempts"] == 1 for s in states
        )

    await until(marked, "the batch's rows marked published")


def withdrawal(user: str) -> Withdraw:
    return Withdraw.model_validate(
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "inline",
         "reference": "ref-inline", "amount": {"amount": "2.50", "currency": "USD"}}
    )  # fmt: skip


# --- the publisher on its own -------------------------------------------------------------


def message(kind: str = "test.inline") -> outbox.OutboxMessage:
    event_id = uuid.uuid4()
    body = json.dumps({"event_id": str(event_id), "type": kind, "data": {}})
    return outbox.OutboxMessage(event_id, "billing.events", kind, kind, body, {})


async def committed(
    engine: AsyncEngine, messages: Sequence[outbox.OutboxMessage], age: float = 0.0
) -> None:
    """Commit outbox rows as a unit of work does (created `age` seconds ago)."""
    async with driver_connection(engine) as db, db.transaction():
        await outbox.insert(db, messages)
        if age:
            await db.execute(
                "UPDATE outbox SET created_at = created_at - make_interval(secs => $2) "
                "WHERE event_id = ANY($1::uuid[])",
                [m.event_id for m in messages],
                age,
            )


async def age(db: asyncpg.Connection, message: outbox.OutboxMessage, seconds: float) -> None:
    await db.execute(
        "UPDATE outbox SET created_at = created_at - make_interval(secs => $2) WHERE event_id = $1",
        message.event_id,
        seconds,
    )


async def published(db: asyncpg.Connection, message: outbox.OutboxMessage) -> bool:
    return bool(
        await db.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1", message.event_id
        )
    )


async def state(db: asyncpg.Connection, message: outbox.OutboxMessage) -> tuple[bool, int]:
    """(published, attempts) of its row."""
    row = await db.fetchrow(
        "SELECT published_at IS NOT NULL AS published, attempts FROM outbox WHERE event_id = $1",
        message.event_id,
    )
    assert row is not None, message
    return bool(row["published"]), int(row["attempts"])


class Broker:
    """A fake `send`: records every publish; can fail one, hold one, or be slow."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []  # every call, confirmed or not
        self.confirmed: list[uuid.UUID] = []
        self.failing: set[uuid.UUID] = set()  # refused once each
        # The first publish of each is confirmed only once its event is set.
        self.held: dict[uuid.UUID, asyncio.Event] = {}
        self.together = 0  # no confirm before this many publishes are in flight at once
        self.all_in = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    def count(self, message: outbox.OutboxMessage) -> int:
        return self.sent.count(message.event_id)

    def release(self) -> None:
        """Let everything held go (a failed test must not hang its publisher's stop)."""
        self.all_in.set()
        for held in self.held.values():
            held.set()

    async def send(self, message: outbox.OutboxMessage) -> None:
        self.sent.append(message.event_id)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.in_flight >= self.together:
                self.all_in.set()
            async with asyncio.timeout(10):  # publishes one after the other never get here
                await self.all_in.wait()
            if message.event_id in self.held and self.sent.count(message.event_id) == 1:
                await self.held[message.event_id].wait()
            if message.event_id in self.failing:
                self.failing.discard(message.event_id)
                raise ConnectionError("the broker refused it (nack)")
            self.confirmed.append(message.event_id)
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def running(publisher: OutboxPublisher, broker: Broker) -> AsyncIterator[OutboxPublisher]:
    publisher.start()
    try:
        yield publisher
    finally:
        broker.release()
        await publisher.stop()


async def test_a_commits_events_are_sent_together_and_marked_in_one_update_by_event_id(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    broker = Broker()
    messages = [message() for _ in range(5)]
    broker.together = 5  # no confirm until all five are in flight: sent one by one, none is
    # An hour of grace: the poll cannot be the one that publishes them.
    publisher = OutboxPublisher(engine, broker.send, poll_interval=HOUR)
    await committed(engine, messages)

    async with running(publisher, broker), statements(engine) as sent:
        publisher.committed(messages)
        for m in messages:
            await until(functools.partial(published, db, m), "marked published")

    assert sorted(broker.sent) == sorted(m.event_id for m in messages)  # once each
    assert broker.most_in_flight == 5
    assert [await state(db, m) for m in messages] == [(True, 1)] * 5
    marks = [q for q in sent if q.startswith("UPDATE outbox SET published_at")]
    assert len(marks) == 1, marks  # one statement for the five
    assert "event_id = ANY" in marks[0]
    assert publisher.published == 5


async def test_a_row_being_published_inline_is_not_taken_by_the_poll(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    broker = Broker()
    inline, other = message(), message()
    gate = asyncio.Event()
    broker.held[inline.event_id] = gate
    publisher = OutboxPublisher(engine, broker.send, poll_interval=HOUR)
    await committed(engine, [inline, other])

    async with running(publisher, broker):
        publisher.committed([inline])
        await until(lambda: broker.count(inline) == 1, "the inline publish")

        # A poll with no grace at all, while the confirm is awaited: the other row only.
        assert await publisher.drain(grace=0.0) == 1
        assert broker.count(inline) == 1
        assert await state(db, other) == (True, 1)
        assert await state(db, inline) == (False, 0)

        gate.set()
        await until(lambda: published(db, inline), "the inline row marked")

    assert broker.count(inline) == 1
    assert await state(db, inline) == (True, 1)


async def test_a_row_younger_than_the_grace_waits_and_the_default_grace_is_the_interval(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """Rows another replica committed (never handed to this one's `committed`): a poll
    takes them only once they are older than the grace, the poll interval by default."""
    broker = Broker()
    publisher = OutboxPublisher(engine, broker.send, poll_interval=HOUR)  # not started
    young = message()
    await committed(engine, [young])

    assert await publisher.drain() == 0  # younger than an hour
    assert broker.sent == []
    assert await state(db, young) == (False, 0)

    await age(db, young, HOUR + 60)
    assert await publisher.drain() == 1
    assert broker.sent == [young.event_id]
    assert await state(db, young) == (True, 1)


async def test_the_running_poll_takes_a_row_once_it_is_older_than_the_grace(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    broker = Broker()
    young, old = message(), message()
    # Polling every 50 ms with an hour of grace.
    publisher = OutboxPublisher(engine, broker.send, poll_interval=0.05, grace=HOUR)

    async with running(publisher, broker):
        async with driver_connection(engine) as connection, connection.transaction():
            await outbox.insert(connection, [young])  # as another replica commits them:
            await outbox.insert(connection, [old])  # the same commit makes both visible
            await connection.execute(
                "UPDATE outbox SET created_at = created_at - interval '2 hours' "
                "WHERE event_id = $1",
                old.event_id,
            )
        await until(lambda: published(db, old), "the old row published by a poll")
        # That poll saw the young row too, and left it.
        assert broker.count(young) == 0
        assert await state(db, young) == (False, 0)

        await age(db, young, 2 * HOUR)
        await until(lambda: published(db, young), "the row, now old, published by the next poll")

    assert broker.sent == [old.event_id, young.event_id]
    assert await state(db, old) == (True, 1)
    assert await state(db, young) == (True, 1)


async def test_an_inline_publish_that_fails_is_left_to_a_later_poll_and_marked_once(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    broker = Broker()
    refused, fine = message(), message()
    broker.failing.add(refused.event_id)
    publisher = OutboxPublisher(engine, broker.send, poll_interval=0.05, grace=HOUR)
    await committed(engine, [refused, fine])

    async with running(publisher, broker):
        publisher.committed([refused, fine])
        await until(lambda: published(db, fine), "the confirmed one marked")
        assert broker.count(refused) == 1
        assert await state(db, refused) == (False, 0)  # not confirmed: not marked

        # Once past the grace, the poll sends it again and marks it.
        await age(db, refused, 2 * HOUR)
        await until(lambda: published(db, refused), "the refused one published by a poll")
        await until(lambda: publisher.published == 2, "the poll's publish counted")

    assert broker.count(refused) == 2  # refused inline, confirmed by the poll's publish
    assert broker.count(fine) == 1
    assert await state(db, refused) == (True, 1)
    assert await state(db, fine) == (True, 1)
    assert publisher.published == 2


async def test_stop_waits_for_the_inline_publishes_marks_them_and_sends_young_rows(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    broker = Broker()
    inline, young = message(), message()  # `young`: another replica's, just committed
    publisher = OutboxPublisher(engine, broker.send, poll_interval=HOUR)
    await committed(engine, [inline, young])
    publisher.start()
    slow = asyncio.Event()
    broker.held[inline.event_id] = slow
    try:
        publisher.committed([inline])
        await until(lambda: broker.count(inline) == 1, "the inline publish started")
        # Its confirm comes a second after stop() is called (a slow broker): stop() must
        # wait for it, not return before and leave the row unmarked.
        stopping = asyncio.create_task(publisher.stop())
        asyncio.get_running_loop().call_later(1.0, slow.set)
        await stopping
    finally:
        broker.release()
        await publisher.stop()

    assert await state(db, inline) == (True, 1)
    assert broker.count(inline) == 1  # marked, so not sent again by the last drain
    assert await state(db, young) == (True, 1)  # the last drain has no grace
    assert broker.sent == [inline.event_id, young.event_id]
    assert publisher.task is None
