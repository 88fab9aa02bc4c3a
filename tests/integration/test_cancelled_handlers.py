"""A handler cancelled mid-transaction never poisons the connection it gives back.

A broker channel that closes cancels every handler task consuming on it (aiormq's
`reject_all` throws into them), wherever they are: waiting for a pooled connection, in
BEGIN, in a statement, in COMMIT. A connection whose operation was interrupted that way
can go back to the pool still inside a transaction with asyncpg's `_top_xact` left set:
every later `transaction()` on it then becomes a SAVEPOINT inside that never-committed
transaction, so the next commands "commit" nothing and hold their row locks forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from billing_contracts.wallet import Deposit
from billing_worker.app import build_worker, load_service_keys
from billing_worker.db.engine import driver_connection
from billing_worker.handlers import wallet
from support.settings import make_settings

pytestmark = pytest.mark.integration

STEPS = 40  # cancel after 0, 1, ... event-loop steps: every point of a short transaction


def deposit(user: str) -> Deposit:
    return Deposit.model_validate(
        {
            "idempotency_key": uuid.uuid4().hex,
            "user_id": user,
            "provider": "sandbox",
            "amount": {"amount": "1.00", "currency": "USD"},
        }
    )


async def test_a_command_cancelled_at_any_point_leaves_the_next_ones_committing(
    database_url: str, rabbitmq_url: str
) -> None:
    # One pooled connection: whatever the cancelled command leaves behind, the next gets.
    worker = build_worker(make_settings(database_url, rabbitmq_url, db_pool_size=1))
    await load_service_keys(worker.engine, worker.service.deps.gateways)
    dsn = worker.settings.database_dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
    observer = await asyncpg.connect(dsn)
    user = f"cancel-{uuid.uuid4().hex[:8]}"
    lost: list[int] = []
    try:
        for steps in range(STEPS):
            cancelled = asyncio.create_task(
                worker.service.command("wallet.deposit", deposit(user), wallet.deposit)
            )
            for _ in range(steps):
                await asyncio.sleep(0)
            cancelled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled

            reply = await asyncio.wait_for(
                worker.service.command("wallet.deposit", deposit(user), wallet.deposit), 30
            )
            assert reply["ok"], reply
            committed = await observer.fetchval(
                "SELECT count(*) FROM transactions WHERE id = $1",
                uuid.UUID(reply["data"]["transaction"]["id"]),
            )
            if committed != 1:
                lost.append(steps)
        assert not lost, f"deposits replied ok but never committed after cancels at {lost}"
        async with driver_connection(worker.engine) as db:
            assert not db.is_in_transaction()
        stuck = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%'"
        )
        assert stuck == 0
    finally:
        await observer.close()
        await worker.engine.dispose()
