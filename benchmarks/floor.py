"""The floor: the least work any worker on this stack must do per wallet command.

Plain aio-pika + asyncpg, no framework (benchmarks/README.md, "The floor"). Per message:
consume a persistent message (manual ack, prefetch 16) -> ONE PostgreSQL transaction of
four statements on the real schema -> publish the event with a publisher confirm ->
publish the reply with a confirm -> ack.

- withdraw (`billing.wallet.withdraw`): conditional debit (`balance_minor >= amount`),
  idempotency row (with the reply, as the worker stores it), transaction row, outbox row.
  The debit comes first so the stored reply can carry the new balance; a key seen before
  (a redelivery) rolls back on the idempotency primary key and re-sends the stored reply.
- deposit completion (`billing.provider-events`, sandbox body): claim the provider's event
  id in idempotency_records, move the transaction `processing -> completed`, credit the
  balance, outbox row; publish `deposit.completed`; no reply.

It does not mark outbox rows published (the event was confirmed inline, before the
reply): the floor does the least, the worker does what it must.

    python -m benchmarks.floor --amqp URL --dsn DSN --queue billing.wallet.withdraw
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from asyncpg.pool import PoolConnectionProxy

WITHDRAW_QUEUE = "billing.wallet.withdraw"
PROVIDER_EVENTS_QUEUE = "billing.provider-events"
EVENTS_EXCHANGE = "billing.events"
_IDS = uuid.UUID("0e5c1a52-3f1b-4c35-8a53-bf2c0c7f0a10")

DEBIT = """UPDATE virtual_accounts SET balance_minor = balance_minor - $3, updated_at = now()
WHERE user_id = $1 AND currency = $2 AND balance_minor >= $3 RETURNING id, balance_minor"""
RECORD = """INSERT INTO idempotency_records (scope, key, request_hash, reply)
VALUES ($1, $2, $3, $4::jsonb)"""
STORED = "SELECT reply::text FROM idempotency_records WHERE scope = $1 AND key = $2"
INSERT_WITHDRAWAL = """INSERT INTO transactions (id, user_id, account_id, kind, status,
    amount_minor, currency, provider, description, reference, created_at, updated_at,
    completed_at)
VALUES ($1, $2, $3, 'withdrawal', 'completed', $4, $5, 'balance', $6, $7, $8, $8, $8)"""
OUTBOX = """INSERT INTO outbox (event_id, exchange, routing_key, type, payload)
VALUES ($1, $2, $3, $3, $4::jsonb)"""
CLAIM = """INSERT INTO idempotency_records (scope, key, request_hash) VALUES ($1, $2, '')
ON CONFLICT DO NOTHING RETURNING true"""
COMPLETE = """UPDATE transactions SET status = 'completed', completed_at = $2, updated_at = $2
WHERE provider = 'sandbox' AND provider_ref = $1 AND status = 'processing'
RETURNING id, user_id, account_id, amount_minor, currency"""
CREDIT = """UPDATE virtual_accounts SET balance_minor = balance_minor + $2, updated_at = now()
WHERE id = $1 RETURNING balance_minor"""

Event = tuple[str, str, bytes]  # event id, type, body
Db = asyncpg.Connection | PoolConnectionProxy  # a connection, or one borrowed from the pool


def minor_of(amount: str) -> int:
    whole, _, fraction = amount.partition(".")
    return int(whole) * 100 + int(fraction.ljust(2, "0") or 0)


def money(minor: int, currency: str) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": currency}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def envelope(event_type: str, now: datetime, data: dict[str, Any]) -> tuple[str, str]:
    event_id = str(uuid.uuid4())
    body = {"event_id": event_id, "type": event_type, "occurred_at": now.isoformat(),
            "version": 1, "data": data}  # fmt: skip
    return event_id, dumps(body)


async def withdraw(db: Db, body: bytes) -> tuple[bytes, Event | None]:
    """Apply one withdraw; returns the reply and the event to publish (None on a refusal)."""
    command = json.loads(body)
    key, user, amount = command["idempotency_key"], command["user_id"], command["amount"]
    currency, minor = amount["currency"], minor_of(amount["amount"])
    digest = hashlib.sha256(body).hexdigest()
    now = datetime.now(UTC)
    try:
        async with db.transaction():
            row = await db.fetchrow(DEBIT, user, currency, minor)
            if row is None:
                reply = dumps({"ok": False, "error": {"code": "insufficient_funds",
                               "message": "insufficient funds", "details": {}}})  # fmt: skip
                await db.execute(RECORD, "wallet.withdraw", key, digest, reply)
                return reply.encode(), None
            transaction_id = uuid.uuid5(_IDS, key)
            transaction = {
                "id": str(transaction_id), "user_id": user, "kind": "withdrawal",
                "status": "completed", "amount": amount, "provider": "balance",
                "created_at": now.isoformat(), "completed_at": now.isoformat(),
            }  # fmt: skip
            balance = money(row["balance_minor"], currency)
            reply = dumps({"ok": True, "data": {"transaction": transaction, "balance": balance}})
            event_id, event = envelope(
                "withdrawal.completed", now,
                {"transaction_id": str(transaction_id), "user_id": user, "amount": amount,
                 "balance": balance, "description": command["description"],
                 "reference": command.get("reference")},
            )  # fmt: skip
            await db.execute(RECORD, "wallet.withdraw", key, digest, reply)
            await db.execute(
                INSERT_WITHDRAWAL, transaction_id, user, row["id"], minor, currency,
                command["description"], command.get("reference"), now,
            )  # fmt: skip
            await db.execute(OUTBOX, uuid.UUID(event_id), EVENTS_EXCHANGE,
                             "withdrawal.completed", event)  # fmt: skip
    except asyncpg.UniqueViolationError:  # done before: the first reply, no second effect
        stored = await db.fetchval(STORED, "wallet.withdraw", key)
        return stored.encode(), None
    return reply.encode(), (event_id, "withdrawal.completed", event.encode())


async def complete_deposit(db: Db, body: bytes) -> Event | None:
    """Apply one sandbox `payment.succeeded` callback; None when there is nothing to send."""
    callback = json.loads(body)
    now = datetime.now(UTC)
    async with db.transaction():
        if not await db.fetchval(CLAIM, "provider:sandbox", callback["id"]):
            return None  # this event id was applied before
        row = await db.fetchrow(COMPLETE, callback["data"]["payment_id"], now)
        if row is None:
            return None  # unknown or already completed: nothing to move
        balance = await db.fetchval(CREDIT, row["account_id"], row["amount_minor"])
        event_id, event = envelope(
            "deposit.completed", now,
            {"transaction_id": str(row["id"]), "user_id": row["user_id"],
             "amount": money(row["amount_minor"], row["currency"]), "provider": "sandbox",
             "balance": money(balance, row["currency"])},
        )  # fmt: skip
        await db.execute(OUTBOX, uuid.UUID(event_id), EVENTS_EXCHANGE, "deposit.completed", event)
    return event_id, "deposit.completed", event.encode()


class Floor:
    def __init__(self, pool: asyncpg.Pool, channel: Any, events: AbstractExchange) -> None:
        self.pool, self.channel, self.events = pool, channel, events
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_message(self, deposits: bool, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self.idle.clear()
        try:
            await self.handle(deposits, message)
        except Exception as error:  # the floor has no error policy: put it back
            print(f"floor: {type(error).__name__}: {error}", file=sys.stderr)
            await message.nack(requeue=True)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def handle(self, deposits: bool, message: AbstractIncomingMessage) -> None:
        reply: bytes | None = None
        async with self.pool.acquire() as db:
            if deposits:
                event = await complete_deposit(db, message.body)
            else:
                reply, event = await withdraw(db, message.body)
        if event is not None:
            event_id, event_type, body = event
            await self.events.publish(
                aio_pika.Message(body, content_type="application/json", message_id=event_id,
                                 type=event_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=event_type, mandatory=False,
            )  # fmt: skip
        if reply is not None and message.reply_to:
            await self.channel.default_exchange.publish(
                aio_pika.Message(reply, content_type="application/json",
                                 correlation_id=message.correlation_id),
                routing_key=message.reply_to, mandatory=False,
            )  # fmt: skip
        await message.ack()


async def serve(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.dsn, min_size=args.pool, max_size=args.pool)
    connection = await aio_pika.connect(args.amqp)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=args.prefetch)
    events = await channel.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)
    floor = Floor(pool, channel, events)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    consumers = []
    for name in args.queue:
        queue = await channel.get_queue(name)  # declared by the load generator
        handler = functools.partial(floor.on_message, name == PROVIDER_EVENTS_QUEUE)
        consumers.append((queue, await queue.consume(handler)))
    print("floor consuming", ", ".join(args.queue), flush=True)
    await stop.wait()
    for queue, tag in consumers:  # stop consuming, finish what is in flight
        await queue.cancel(tag)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(floor.idle.wait(), 30)
    await connection.close()
    await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description="The floor worker of the benchmark: aio-pika + asyncpg, "
        "four statements in one transaction, confirmed event and reply, then ack. "
        "Stops on SIGTERM/SIGINT after finishing in-flight messages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--amqp", required=True, help="AMQP URL including the vhost")
    parser.add_argument("--dsn", required=True, help="asyncpg DSN of a migrated database")
    parser.add_argument("--queue", action="append", default=None,
                        help=f"queue to consume, repeatable (default {WITHDRAW_QUEUE}); "
                        f"{PROVIDER_EVENTS_QUEUE} completes sandbox deposits")  # fmt: skip
    parser.add_argument("--prefetch", type=int, default=16, help="messages in flight per queue")
    parser.add_argument("--pool", type=int, default=16, help="PostgreSQL connections")
    args = parser.parse_args(argv)
    args.queue = args.queue or [WITHDRAW_QUEUE]
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
