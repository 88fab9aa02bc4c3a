"""The coalescers' batches have connections of their own: with every connection of the
main pool taken by single messages, a batch of withdrawals still runs at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from billing_contracts import names
from billing_contracts.wallet import Withdraw
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.wallet import SqlWallet
from support.settings import make_settings

pytestmark = pytest.mark.integration

POOL = 2


@pytest.fixture
async def worker(database_url: str, rabbitmq_url: str) -> AsyncIterator[Worker]:
    worker = build_worker(make_settings(database_url, rabbitmq_url, db_pool_size=POOL))
    yield worker
    await worker.engine.dispose()
    if worker.service.batch_engine is not None:
        await worker.service.batch_engine.dispose()


def withdrawal(user: str) -> Withdraw:
    return Withdraw.model_validate({
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "lane",
        "amount": {"amount": "1.00", "currency": "USD"},
    })  # fmt: skip


async def test_a_batch_runs_while_single_messages_hold_every_pooled_connection(
    worker: Worker,
) -> None:
    user = f"lane-{uuid.uuid4().hex[:10]}"
    async with driver_connection(worker.engine) as db, db.transaction():
        await SqlWallet(db).open_account(user, "USD")
        await db.execute(
            "UPDATE virtual_accounts SET balance_minor = 1000 WHERE user_id = $1", user
        )
    [route] = [route for route in worker.routes if route.queue == names.WALLET_WITHDRAW]
    assert route.coalescer is not None

    async with AsyncExitStack() as held:
        for _ in range(POOL):  # what a flood of single messages does to the main pool
            await held.enter_async_context(worker.engine.connect())
        async with asyncio.timeout(10):  # the main pool would make it wait its 30 s timeout
            replies = await asyncio.gather(*(route.handle(withdrawal(user)) for _ in range(5)))

    assert all(reply is not None and reply["ok"] for reply in replies), replies
    async with driver_connection(worker.engine) as db:
        balance = await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1", user
        )
    assert balance == 500
