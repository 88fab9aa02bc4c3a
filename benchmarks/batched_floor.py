"""The batched floor: the best this stack can do per wallet command.

Plain aio-pika + asyncpg on the real schema, like the floor (benchmarks/floor.py), but a
batch of messages shares one database transaction, one round of publisher confirms and
one ack (benchmarks/README.md, "The batched floor"). Per queue, on a channel of its own
(publisher confirms, a large prefetch): take whatever has arrived, up to `--batch`
messages (never waiting on a timer: an idle queue waits for its next message only), then

- withdraws: ONE transaction of four statements for the whole batch: the debits
  aggregated per account in one guarded UPDATE (accounts locked in id order, so batches
  of two queues cannot deadlock; a deadlock is retried anyway), the idempotency records
  with their replies, the transactions with one audit row each, the outbox rows. Each
  reply carries its own running balance (computed here, in order);
- sandbox deposit completions: claim the event ids, move the transactions
  `processing -> completed` (with their audit rows), credit the accounts aggregated, the
  outbox rows: again one statement each in one transaction;
- after COMMIT, every event and reply of the batch is published at once and the confirms
  awaited together; then ONE `ack(multiple=True)` on the batch's last delivery. While a
  batch publishes, the next one is in the database; the one after waits: batches of a
  queue are acknowledged in order, so a multiple ack covers its own batch only.

A batch in trouble -- an account short of funds or missing, an idempotency key seen
before (a redelivery), an event id claimed before, a body it cannot read -- is rolled
back and done message by message with the floor's own `withdraw()` and
`complete_deposit()`: a redelivery gets its stored reply and changes nothing.

    python -m benchmarks.batched_floor --amqp URL --dsn DSN --queue billing.wallet.withdraw
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from benchmarks import floor
from benchmarks.floor import EVENTS_EXCHANGE, PROVIDER_EVENTS_QUEUE, WITHDRAW_QUEUE, Db, Event

WITHDRAW_SCOPE = "wallet.withdraw"
SANDBOX_SCOPE = "provider:sandbox"
DEADLOCK_RETRIES = 5

# The debits of a batch, summed per account; the accounts locked in id order first.
DEBIT_MANY = """
WITH wanted AS (
    SELECT user_id, currency, sum(amount)::bigint AS total
    FROM unnest($1::text[], $2::text[], $3::bigint[]) AS w(user_id, currency, amount)
    GROUP BY user_id, currency
), locked AS MATERIALIZED (
    SELECT a.id, w.total FROM virtual_accounts AS a
    JOIN wanted AS w ON w.user_id = a.user_id AND w.currency = a.currency
    ORDER BY a.id FOR UPDATE OF a
)
UPDATE virtual_accounts AS a SET balance_minor = a.balance_minor - l.total, updated_at = now()
FROM locked AS l
WHERE a.id = l.id AND a.balance_minor >= l.total
RETURNING a.id, a.user_id, a.currency, a.balance_minor
"""
RECORD_MANY = """
INSERT INTO idempotency_records (scope, key, request_hash, reply)
SELECT $1, r.key, r.hash, r.reply::jsonb FROM unnest($2::text[], $3::text[], $4::text[])
     AS r(key, hash, reply)
"""
# The transactions and their audit rows (one each) in one statement, as the worker's
# INSERT_MANY writes them.
INSERT_WITHDRAWALS = """
WITH created AS (
    INSERT INTO transactions (id, user_id, account_id, kind, status, amount_minor, currency,
                              provider, description, reference, created_at, updated_at,
                              completed_at)
    SELECT t.id, t.user_id, t.account_id, 'withdrawal', 'completed', t.amount, t.currency,
           'balance', t.description, t.reference, $8, $8, $8
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::text[],
                $7::text[]) AS t(id, user_id, account_id, amount, currency, description, reference)
    RETURNING id
)
INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
SELECT id, NULL, 'completed', 'withdrawal', $8 FROM created
"""
OUTBOX_MANY = """
INSERT INTO outbox (event_id, exchange, routing_key, type, payload)
SELECT e.id, $1, e.type, e.type, e.payload::jsonb
FROM unnest($2::uuid[], $3::text[], $4::text[]) AS e(id, type, payload)
"""
CLAIM_MANY = """
INSERT INTO idempotency_records (scope, key, request_hash)
SELECT $1, key, '' FROM unnest($2::text[]) AS key
ON CONFLICT DO NOTHING RETURNING key
"""
COMPLETE_MANY = """
WITH moved AS (
    UPDATE transactions AS t SET status = 'completed', completed_at = $2, updated_at = $2
    FROM unnest($1::text[]) AS r(ref)
    WHERE t.provider = 'sandbox' AND t.provider_ref = r.ref AND t.status = 'processing'
    RETURNING t.id, t.user_id, t.account_id, t.amount_minor, t.currency, t.provider_ref
), audit AS (
    INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
    SELECT id, 'processing', 'completed', 'sandbox:payment.succeeded', $2 FROM moved
)
SELECT * FROM moved
"""
CREDIT_MANY = """
WITH credits AS (
    SELECT account_id, sum(amount)::bigint AS total
    FROM unnest($1::uuid[], $2::bigint[]) AS c(account_id, amount) GROUP BY account_id
), locked AS MATERIALIZED (
    SELECT a.id, c.total FROM virtual_accounts AS a JOIN credits AS c ON c.account_id = a.id
    ORDER BY a.id FOR UPDATE OF a
)
UPDATE virtual_accounts AS a SET balance_minor = a.balance_minor + l.total, updated_at = now()
FROM locked AS l WHERE a.id = l.id
RETURNING a.id, a.balance_minor
"""


class Trouble(Exception):
    """The batch cannot be applied as one: roll back, do it message by message."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one message of a batch needs once the batch committed."""

    reply: bytes | None = None
    event: Event | None = None
    failed: bool = False  # not applied: put back (nack with requeue)


@dataclass(frozen=True, slots=True)
class Command:
    key: str
    user: str
    amount: dict[str, str]
    minor: int
    description: str
    reference: str | None
    digest: str

    @classmethod
    def parse(cls, body: bytes) -> Command:
        command = json.loads(body)
        amount = command["amount"]
        return cls(command["idempotency_key"], command["user_id"], amount,
                   floor.minor_of(amount["amount"]), command["description"],
                   command.get("reference"), hashlib.sha256(body).hexdigest())  # fmt: skip

    @property
    def account(self) -> tuple[str, str]:
        return self.user, self.amount["currency"]


def _withdrawn(c: Command, balance_minor: int, now: datetime) -> tuple[uuid.UUID, str, Event]:
    """The reply and the event of an applied withdraw, exactly as the floor makes them."""
    transaction_id = uuid.uuid5(floor._IDS, c.key)  # the floor's own transaction ids
    transaction = {
        "id": str(transaction_id), "user_id": c.user, "kind": "withdrawal",
        "status": "completed", "amount": c.amount, "provider": "balance",
        "created_at": now.isoformat(), "completed_at": now.isoformat(),
    }  # fmt: skip
    balance = floor.money(balance_minor, c.amount["currency"])
    reply = floor.dumps({"ok": True, "data": {"transaction": transaction, "balance": balance}})
    event_id, event = floor.envelope(
        "withdrawal.completed", now,
        {"transaction_id": str(transaction_id), "user_id": c.user, "amount": c.amount,
         "balance": balance, "description": c.description, "reference": c.reference},
    )  # fmt: skip
    return transaction_id, reply, (event_id, "withdrawal.completed", event.encode())


def running(after: dict[Any, int], deltas: list[tuple[Any, int]]) -> list[int]:
    """Each step's balance in order, from the balances after all of them.

    Deltas -5 then -3 on an account that ended at 92: 95, then 92.
    """
    balance = dict(after)
    for account, delta in deltas:
        balance[account] -= delta
    steps = []
    for account, delta in deltas:
        balance[account] += delta
        steps.append(balance[account])
    return steps


async def _withdraw_all(db: Db, commands: list[Command]) -> list[Outcome]:
    now = datetime.now(UTC)
    async with db.transaction():
        rows = await db.fetch(DEBIT_MANY, [c.user for c in commands],
                              [c.amount["currency"] for c in commands],
                              [c.minor for c in commands])  # fmt: skip
        accounts = {(r["user_id"], r["currency"]): r["id"] for r in rows}
        if set(accounts) != {c.account for c in commands}:
            raise Trouble("an account is missing or short of funds")
        after = {(r["user_id"], r["currency"]): r["balance_minor"] for r in rows}
        balances = running(after, [(c.account, -c.minor) for c in commands])
        done = [_withdrawn(c, b, now) for c, b in zip(commands, balances, strict=True)]
        await db.execute(RECORD_MANY, WITHDRAW_SCOPE, [c.key for c in commands],
                         [c.digest for c in commands], [reply for _, reply, _ in done])  # fmt: skip
        await db.execute(
            INSERT_WITHDRAWALS, [t for t, _, _ in done], [c.user for c in commands],
            [accounts[c.account] for c in commands], [c.minor for c in commands],
            [c.amount["currency"] for c in commands], [c.description for c in commands],
            [c.reference for c in commands], now,
        )  # fmt: skip
        await _outbox(db, [event for _, _, event in done])
    return [Outcome(reply.encode(), event) for _, reply, event in done]


async def _deposit_all(db: Db, callbacks: list[tuple[str, str]]) -> list[Outcome]:
    now = datetime.now(UTC)
    async with db.transaction():
        claimed = await db.fetch(CLAIM_MANY, SANDBOX_SCOPE, [event for event, _ in callbacks])
        if len(claimed) != len(callbacks):
            raise Trouble("an event id was claimed before")
        moved = {r["provider_ref"]: r for r in await db.fetch(
            COMPLETE_MANY, [ref for _, ref in callbacks], now)}  # fmt: skip
        if len(moved) != len(callbacks):
            raise Trouble("a deposit is unknown or not processing")
        rows = [moved[ref] for _, ref in callbacks]
        credited = await db.fetch(CREDIT_MANY, [r["account_id"] for r in rows],
                                  [r["amount_minor"] for r in rows])  # fmt: skip
        after = {r["id"]: r["balance_minor"] for r in credited}
        if set(after) != {r["account_id"] for r in rows}:
            raise Trouble("a deposit's account is missing")
        balances = running(after, [(r["account_id"], r["amount_minor"]) for r in rows])
        events: list[Event] = []
        for row, balance in zip(rows, balances, strict=True):
            event_id, event = floor.envelope(
                "deposit.completed", now,
                {"transaction_id": str(row["id"]), "user_id": row["user_id"],
                 "amount": floor.money(row["amount_minor"], row["currency"]),
                 "provider": "sandbox", "balance": floor.money(balance, row["currency"])},
            )  # fmt: skip
            events.append((event_id, "deposit.completed", event.encode()))
        await _outbox(db, events)
    return [Outcome(event=event) for event in events]


async def _outbox(db: Db, events: list[Event]) -> None:
    await db.execute(
        OUTBOX_MANY, EVENTS_EXCHANGE, [uuid.UUID(event_id) for event_id, _, _ in events],
        [kind for _, kind, _ in events], [body.decode() for _, _, body in events],
    )  # fmt: skip


async def _retrying(apply: Callable[[], Awaitable[list[Outcome]]]) -> list[Outcome]:
    for _ in range(DEADLOCK_RETRIES):
        with contextlib.suppress(asyncpg.DeadlockDetectedError):
            return await apply()
    raise Trouble(f"deadlocked {DEADLOCK_RETRIES} times")


async def _one(apply: Callable[[Db, bytes], Awaitable[Outcome]], db: Db, body: bytes) -> Outcome:
    try:
        return await apply(db, body)
    except Exception as error:  # the floor has no error policy: put it back
        print(f"batched floor: {type(error).__name__}: {error}", file=sys.stderr)
        return Outcome(failed=True)


async def _withdraw_one(db: Db, body: bytes) -> Outcome:
    return Outcome(*await floor.withdraw(db, body))


async def _deposit_one(db: Db, body: bytes) -> Outcome:
    return Outcome(event=await floor.complete_deposit(db, body))


async def withdraw_batch(db: Db, bodies: list[bytes]) -> list[Outcome]:
    """Apply a batch of withdraws in one transaction, else one by one (floor.withdraw)."""
    try:
        commands = [Command.parse(body) for body in bodies]
        return await _retrying(lambda: _withdraw_all(db, commands))
    except (Trouble, asyncpg.PostgresError, ValueError, KeyError, TypeError):
        return [await _one(_withdraw_one, db, body) for body in bodies]


async def deposit_batch(db: Db, bodies: list[bytes]) -> list[Outcome]:
    """Apply a batch of sandbox callbacks in one transaction, else one by one."""
    try:
        parsed = [json.loads(body) for body in bodies]
        callbacks = [(str(c["id"]), str(c["data"]["payment_id"])) for c in parsed]
        return await _retrying(lambda: _deposit_all(db, callbacks))
    except (Trouble, asyncpg.PostgresError, ValueError, KeyError, TypeError):
        return [await _one(_deposit_one, db, body) for body in bodies]


Apply = Callable[[Db, list[bytes]], Awaitable[list[Outcome]]]


class Lane:
    """One queue: its own channel, batches taken in order, each acknowledged in order."""

    def __init__(self, channel: AbstractChannel, events: AbstractExchange, apply: Apply,
                 pool: asyncpg.Pool, size: int) -> None:  # fmt: skip
        self.channel, self.events, self.apply, self.pool, self.size = (
            channel, events, apply, pool, size)  # fmt: skip
        self.buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self.stopping = False
        self.batches = self.messages = 0  # printed on exit: the mean batch size

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.buffer.put_nowait(message)

    async def next_batch(self) -> list[AbstractIncomingMessage]:
        """What has arrived, up to `size`: waits for the first message only. [] = stop."""
        first = None if self.stopping else await self.buffer.get()
        if first is None:
            return []
        await asyncio.sleep(0)  # deliveries already read from the socket reach the buffer
        batch = [first]
        while len(batch) < self.size and not self.buffer.empty():
            message = self.buffer.get_nowait()
            if message is None:  # stop after this batch
                self.stopping = True
                break
            batch.append(message)
        return batch

    async def run(self) -> None:
        previous: asyncio.Task[None] | None = None
        while batch := await self.next_batch():
            self.batches, self.messages = self.batches + 1, self.messages + len(batch)
            try:
                async with self.pool.acquire() as db:
                    outcomes = await self.apply(db, [message.body for message in batch])
            except Exception as error:  # e.g. the database went away: put the batch back
                print(f"batched floor: {type(error).__name__}: {error}", file=sys.stderr)
                outcomes = [Outcome(failed=True)] * len(batch)
            # One batch publishes while the next is in the database; the acks stay in
            # order, so each multiple=True covers its own batch only.
            if previous is not None:
                await previous  # a failed publish or ack stops the lane
            previous = asyncio.create_task(self.settle(batch, outcomes))
        if previous is not None:
            await previous

    async def settle(self, batch: list[AbstractIncomingMessage], outcomes: list[Outcome]) -> None:
        """Publish the batch's events and replies, confirms awaited together; then ack."""
        publishes = []
        for message, outcome in zip(batch, outcomes, strict=True):
            if outcome.event is not None:
                event_id, event_type, body = outcome.event
                publishes.append(self.events.publish(
                    aio_pika.Message(body, content_type="application/json",
                                     message_id=event_id, type=event_type,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=event_type, mandatory=False,
                ))  # fmt: skip
            if outcome.reply is not None and message.reply_to:
                publishes.append(self.channel.default_exchange.publish(
                    aio_pika.Message(outcome.reply, content_type="application/json",
                                     correlation_id=message.correlation_id),
                    routing_key=message.reply_to, mandatory=False,
                ))  # fmt: skip
        await asyncio.gather(*publishes)
        for message, outcome in zip(batch, outcomes, strict=True):
            if outcome.failed:  # settled now, so the multiple ack below skips it
                await message.nack(requeue=True)
        done = [message for message, outcome in zip(batch, outcomes, strict=True)
                if not outcome.failed]  # fmt: skip
        if done:
            await done[-1].ack(multiple=True)


async def serve(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.dsn, min_size=args.pool, max_size=args.pool)
    connection = await aio_pika.connect(args.amqp)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    lanes, consumers = [], []
    for name in args.queue:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=args.prefetch)
        events = await channel.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)
        apply = deposit_batch if name == PROVIDER_EVENTS_QUEUE else withdraw_batch
        lane = Lane(channel, events, apply, pool, args.batch)
        queue = await channel.get_queue(name)  # declared by the load generator
        consumers.append((queue, await queue.consume(lane.on_message)))
        lanes.append(lane)
    runs = [asyncio.create_task(lane.run()) for lane in lanes]
    print("batched floor consuming", ", ".join(args.queue), flush=True)
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait([waiting, *runs], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    for queue, tag in consumers:  # stop consuming, finish what was delivered
        await queue.cancel(tag)
    await asyncio.sleep(0)  # deliveries read before the cancel reach the buffers
    for lane in lanes:
        lane.buffer.put_nowait(None)
    try:
        await asyncio.wait_for(asyncio.gather(*runs), 30)  # a lane that failed raises here
    finally:
        for name, lane in zip(args.queue, lanes, strict=True):
            mean = lane.messages / lane.batches if lane.batches else 0.0
            print(f"{name}: {lane.messages} messages in {lane.batches} batches "
                  f"(mean {mean:.1f})", flush=True)  # fmt: skip
        await connection.close()
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batched_floor",
        description="The batched floor of the benchmark: aio-pika + asyncpg, a batch of "
        "messages per database transaction (one statement per kind of row), the batch's "
        "events and replies confirmed together, one multiple ack. Stops on SIGTERM/SIGINT "
        "after finishing the batches delivered.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--amqp", required=True, help="AMQP URL including the vhost")
    parser.add_argument("--dsn", required=True, help="asyncpg DSN of a migrated database")
    parser.add_argument("--queue", action="append", default=None,
                        help=f"queue to consume, repeatable (default {WITHDRAW_QUEUE}); "
                        f"{PROVIDER_EVENTS_QUEUE} completes sandbox deposits")  # fmt: skip
    parser.add_argument("--prefetch", type=int, default=256, help="messages in flight per queue")
    parser.add_argument("--batch", type=int, default=64, help="most messages per transaction")
    parser.add_argument("--pool", type=int, default=4, help="PostgreSQL connections")
    args = parser.parse_args(argv)
    args.queue = args.queue or [WITHDRAW_QUEUE]
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
