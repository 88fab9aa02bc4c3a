"""Retention: old idempotency records, claims and published outbox rows go, in batches,
while the worker keeps answering; an unpublished event never goes; and a command retried
after its record went is not run again, so it never moves money twice."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from billing_worker.app import Worker, build_worker
from billing_worker.db import outbox
from billing_worker.db.engine import create_engine
from billing_worker.jobs.retention import Retention
from billing_worker.settings import Settings
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration

DEPOSIT, WITHDRAW = "billing.wallet.deposit", "billing.wallet.withdraw"
BALANCE = "billing.wallet.balance"
BACKLOG = 3000  # old rows of each kind
BATCH = 100


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url  # retention at 0 days deletes every record of the database


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    # The job runs when the test says (run_once); its own loop would wait an hour.
    return make_settings(
        database_url, rabbitmq_url, idempotency_retention_days=0, outbox_retention_days=0,
        retention_batch_size=BATCH, retention_pause_ms=20, retention_interval_seconds=3600,
    )  # fmt: skip


async def connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip


async def seed_backlog(db: asyncpg.Connection) -> None:
    """Old command records, old and young provider claims, old published and old
    unpublished outbox rows (the unpublished ones for an exchange nobody publishes to:
    the worker's publisher would otherwise send them)."""
    await db.execute(
        "INSERT INTO idempotency_records (scope, key, request_hash, reply, created_at) "
        "SELECT 'wallet.withdraw|user:old', 'k' || n, 'h', '{\"ok\": true}'::jsonb, "
        "       now() - interval '40 days' FROM generate_series(1, $1) n",
        BACKLOG,
    )
    await db.execute(
        "INSERT INTO idempotency_records (scope, key, request_hash, created_at) "
        "SELECT 'provider:stripe', 'evt_old_' || n, '', now() - interval '8 days' "
        "FROM generate_series(1, 10) n "
        "UNION ALL SELECT 'provider:stripe', 'evt_young_' || n, '', now() - interval '2 days' "
        "FROM generate_series(1, 10) n "
        "UNION ALL SELECT 'reconcile:stripe', 'rec_young_' || n, '', now() - interval '1 day' "
        "FROM generate_series(1, 5) n"
    )
    await db.execute(
        "INSERT INTO outbox (event_id, exchange, routing_key, type, payload, created_at, "
        "                    published_at, attempts) "
        "SELECT gen_random_uuid(), 'billing.events', 'deposit.completed', 'deposit.completed', "
        "       '{}'::jsonb, now() - interval '30 days', now() - interval '29 days', 1 "
        "FROM generate_series(1, $1)",
        BACKLOG,
    )


async def seed_unpublished(db: asyncpg.Connection, count: int) -> list[int]:
    rows = await db.fetch(
        "INSERT INTO outbox (event_id, exchange, routing_key, type, payload, created_at) "
        "SELECT gen_random_uuid(), 'billing.events', 'never.sent', 'never.sent', '{}'::jsonb, "
        "       now() - interval '90 days' FROM generate_series(1, $1) RETURNING id",
        count,
    )
    return [row["id"] for row in rows]


async def test_at_zero_days_old_records_go_in_batches_while_commands_keep_being_answered(
    worker: Worker, bus: Bus, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = await connect(database_url)
    try:
        await seed_backlog(db)
        user = f"ret-{uuid.uuid4().hex[:8]}"
        funded = await bus.call(DEPOSIT, command(user, amount=usd("100.00")))
        tx = funded["data"]["transaction"]["id"]
        await bus.event("deposit.completed", lambda d: d["transaction_id"] == tx)

        caplog.set_level(logging.INFO, logger="billing_worker.jobs.retention")
        job = asyncio.create_task(worker.retention.run_once())
        answered = 0
        while not job.done():  # withdrawals all along the job's run
            reply = await bus.call(WITHDRAW, command(user, amount=usd("0.01"), description="x"))
            if not reply["ok"]:
                job.cancel()
            assert reply["ok"], reply
            answered += 1
        deleted = await job

        assert answered > 0
        assert deleted["idempotency_records"] >= BACKLOG
        assert deleted["provider_claims"] == 10  # the 8-day-old ones; 7 days are kept
        assert deleted["outbox_rows"] >= BACKLOG
        summary = [r.getMessage() for r in caplog.records if "retention deleted" in r.message]
        assert summary, caplog.text
        batches = int(summary[-1].split(" in ")[1].split()[0])
        assert batches >= 2 * BACKLOG // BATCH, summary  # small batches, not one statement
        kept = await db.fetch(
            "SELECT key FROM idempotency_records WHERE key ~ '^(k[0-9]|evt_|rec_)'"
        )
        assert Counter(row["key"].rsplit("_", 1)[0] for row in kept) == {
            "evt_young": 10,  # claims younger than 7 days stay, whatever the retention
            "rec_young": 5,
        }
        assert await db.fetchval("SELECT count(*) FROM outbox WHERE published_at < now() "
                                 "- interval '1 day'") == 0  # fmt: skip
        balance = await bus.call(BALANCE, {"user_id": user, "currency": "USD"})
        expected = f"{100 - answered / 100:.2f}"
        assert balance["data"]["accounts"][0]["balance"]["amount"] == expected
    finally:
        await db.close()


@pytest.fixture
async def job(database_url: str) -> AsyncIterator[Retention]:
    engine = create_engine(database_url, pool_size=2)
    yield Retention(engine, record_days=0, outbox_days=0, interval_seconds=3600, batch=7,
                    pause_seconds=0)  # fmt: skip
    await engine.dispose()


async def test_an_unpublished_outbox_row_is_never_deleted(
    job: Retention, database_url: str
) -> None:
    db = await connect(database_url)
    try:
        await seed_backlog(db)
        unpublished = await seed_unpublished(db, 25)

        deleted = await job.run_once()

        assert deleted["outbox_rows"] >= BACKLOG
        left = await db.fetch("SELECT id, published_at FROM outbox ORDER BY id")
        assert [row["id"] for row in left] == unpublished
        assert all(row["published_at"] is None for row in left)
    finally:
        await db.close()


async def test_rows_a_publisher_holds_are_skipped_not_waited_for(
    job: Retention, database_url: str
) -> None:
    db, publisher = await connect(database_url), await connect(database_url)
    try:
        unpublished = await seed_unpublished(db, 3)
        async with publisher.transaction():  # a publisher mid-send holds its batch
            locked = await outbox.lock_batch(publisher, 10)
            assert [m.id for m in locked] == unpublished
            await outbox.mark_published(publisher, [unpublished[0]])  # sent, not committed
            deleted = await asyncio.wait_for(job.run_once(), 30)  # not blocked by the lock
            assert deleted["outbox_rows"] == 0
        # Committed as published just now: gone only once older than the retention.
        assert await db.fetchval("SELECT count(*) FROM outbox") == 3
        await job.run_once()
        assert [r["id"] for r in await db.fetch("SELECT id FROM outbox ORDER BY id")] == (
            unpublished[1:]
        )
    finally:
        await db.close()
        await publisher.close()


# ---- a retry after the window ----


def command(user: str, **fields: Any) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "user_id": user, **fields}


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


async def money_of(db: asyncpg.Connection, user: str) -> tuple[Any, ...]:
    balance = await db.fetchval(
        "SELECT coalesce(sum(balance_minor), 0) FROM virtual_accounts WHERE user_id = $1", user
    )
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM transactions WHERE user_id = $1) AS transactions, "
        "       (SELECT count(*) FROM invoices WHERE user_id = $1) AS invoices, "
        "       (SELECT count(*) FROM subscriptions WHERE user_id = $1) AS subscriptions",
        user,
    )
    return (balance, *counts.values())


def expired(reply: dict[str, Any], key: str, name: str, value: str) -> bool:
    return (
        reply.get("ok") is False
        and reply["error"]["code"] == "idempotency_conflict"
        and reply["error"]["details"] == {"idempotency_key": key, "expired": True, name: value}
    )


async def test_a_retry_after_the_window_is_refused_and_moves_no_money_twice(
    worker: Worker, bus: Bus, database_url: str
) -> None:
    user = f"late-{uuid.uuid4().hex[:8]}"
    deposit = command(user, amount=usd("50.00"))
    first = await bus.call(DEPOSIT, deposit)
    deposit_id = first["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == deposit_id)
    withdraw = command(user, amount=usd("5.00"), description="late")
    withdrawn = await bus.call(WITHDRAW, withdraw)
    assert withdrawn["ok"], withdrawn
    invoice = command(user, currency="USD", lines=[
        {"description": "Blue mug", "quantity": 1, "unit_price": usd("3.00")}])  # fmt: skip
    issued = await bus.call("billing.invoice.create", invoice)
    assert issued["ok"], issued
    pay = command(user, invoice_id=issued["data"]["id"], source="balance")
    paid = await bus.call("billing.invoice.pay", pay)
    assert paid["ok"], paid
    plan = f"ret-{uuid.uuid4().hex[:8]}"
    upserted = await bus.call("billing.plan.upsert", {"idempotency_key": uuid.uuid4().hex,
        "code": plan, "name": "Pro", "interval": "month", "price": usd("10.00")})  # fmt: skip
    assert upserted["ok"], upserted
    subscribe = {**command(user), "plan_code": plan, "payment_source": "balance"}
    subscribed = await bus.call("billing.subscription.create", subscribe)
    assert subscribed["ok"], subscribed

    db = await connect(database_url)
    try:
        before = await money_of(db, user)
        assert before[0] == 5000 - 500 - 300 - 1000
        deleted = await worker.retention.run_once()  # 0 days: every reply is forgotten
        assert deleted["idempotency_records"] >= 6
        assert await db.fetchval("SELECT count(*) FROM idempotency_records WHERE scope LIKE "
                                 "'%|user:' || $1", user) == 0  # fmt: skip
        events = len(bus.events.messages)

        retried = {
            DEPOSIT: await bus.call(DEPOSIT, deposit),
            WITHDRAW: await bus.call(WITHDRAW, withdraw),
            "billing.invoice.create": await bus.call("billing.invoice.create", invoice),
            "billing.invoice.pay": await bus.call("billing.invoice.pay", pay),
            "billing.subscription.create": await bus.call("billing.subscription.create", subscribe),
        }

        assert expired(retried[DEPOSIT], deposit["idempotency_key"], "transaction_id", deposit_id)
        assert expired(retried[WITHDRAW], withdraw["idempotency_key"], "transaction_id",
                       withdrawn["data"]["transaction"]["id"])  # fmt: skip
        assert expired(retried["billing.invoice.create"], invoice["idempotency_key"],
                       "invoice_id", issued["data"]["id"])  # fmt: skip
        # An invoice is paid once: its state refuses a second payment before any money moves.
        assert retried["billing.invoice.pay"]["error"]["code"] == "invalid_state"
        assert expired(retried["billing.subscription.create"], subscribe["idempotency_key"],
                       "subscription_id", subscribed["data"]["subscription"]["id"])  # fmt: skip
        assert await money_of(db, user) == before
        await asyncio.sleep(0.5)  # an outbox round: nothing was announced either
        assert len(bus.events.messages) == events
        assert not bus.dead_letters.messages
        # The refusal is recorded: the same retry gets the same answer, at once.
        assert await bus.call(WITHDRAW, withdraw) == retried[WITHDRAW]
    finally:
        await db.close()


async def test_a_coalesced_retry_after_the_window_is_refused_alone(
    database_url: str, rabbitmq_url: str
) -> None:
    """Withdrawals share a transaction: the expired one must not fail its batch-mates."""
    settings = make_settings(database_url, rabbitmq_url, idempotency_retention_days=0,
                             retention_interval_seconds=3600, coalesce_max=32)  # fmt: skip
    worker = build_worker(settings)
    bus = Bus(rabbitmq_url)
    async with worker.app:
        await bus.start()
        try:
            user = f"batch-{uuid.uuid4().hex[:8]}"
            funded = await bus.call(DEPOSIT, command(user, amount=usd("10.00")))
            tx = funded["data"]["transaction"]["id"]
            await bus.event("deposit.completed", lambda d: d["transaction_id"] == tx)
            old = command(user, amount=usd("1.00"), description="old")
            assert (await bus.call(WITHDRAW, old))["ok"]
            await worker.retention.run_once()

            fresh = [command(user, amount=usd("1.00"), description="new") for _ in range(8)]
            replies = await asyncio.gather(
                *(bus.call(WITHDRAW, body) for body in [*fresh[:4], old, *fresh[4:]])
            )

            assert [reply["ok"] for reply in replies] == [True] * 4 + [False] + [True] * 4
            assert replies[4]["error"]["details"]["expired"] is True
            balance = await bus.call(BALANCE, {"user_id": user, "currency": "USD"})
            assert balance["data"]["accounts"][0]["balance"]["amount"] == "1.00"
        finally:
            await bus.close()


async def test_the_worker_runs_retention_on_its_interval(
    database_url: str, rabbitmq_url: str
) -> None:
    settings = make_settings(database_url, rabbitmq_url, idempotency_retention_days=0,
                             retention_interval_seconds=0.2)  # fmt: skip
    db = await connect(database_url)
    old = "SELECT count(*) FROM idempotency_records WHERE key LIKE 'k%'"
    try:
        await seed_backlog(db)
        async with build_worker(settings).app:
            for _ in range(300):  # a bounded wait for the job's own rounds
                if not await db.fetchval(old):
                    break
                await asyncio.sleep(0.1)
            assert await db.fetchval(old) == 0
    finally:
        await db.close()
