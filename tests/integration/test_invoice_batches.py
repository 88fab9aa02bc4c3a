"""Invoice payments from the balance, coalesced: one transaction for the batch, each pay in
a savepoint of its own, so a refusal after the invoice was claimed leaves nothing of that
pay behind and the others' payments in place."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing_contracts import names
from billing_contracts.invoices import CreateInvoice, PayInvoice
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.wallet import SqlWallet
from billing_worker.handlers import invoices
from billing_worker.messaging.coalescer import Coalescer
from billing_worker.messaging.routes import COALESCED
from billing_worker.settings import Settings
from support.attacker import eventually
from support.invariants import connect
from support.rpc import Bus
from support.statements import statements

pytestmark = pytest.mark.integration

SCOPE = "invoice.pay"


def new_user() -> str:
    return f"batch-{uuid.uuid4().hex[:12]}"


async def issued(worker: Worker, user: str, amount: str) -> str:
    command = CreateInvoice.model_validate({
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "currency": "USD",
        "lines": [{"description": "Blue mug", "quantity": 1,
                   "unit_price": {"amount": amount, "currency": "USD"}}],
    })  # fmt: skip
    reply = await worker.service.command("invoice.create", command, invoices.create_invoice)
    assert reply["ok"], reply
    return str(reply["data"]["id"])


async def funded(worker: Worker, user: str, minor: int) -> None:
    async with driver_connection(worker.engine) as db, db.transaction():
        await SqlWallet(db).open_account(user, "USD")
        await db.execute(
            "UPDATE virtual_accounts SET balance_minor = $2 WHERE user_id = $1", user, minor
        )


def pay(user: str, invoice_id: str, key: str | None = None) -> PayInvoice:
    return PayInvoice.model_validate({
        "idempotency_key": key or uuid.uuid4().hex, "user_id": user, "invoice_id": invoice_id,
        "source": "balance",
    })  # fmt: skip


async def batch(worker: Worker, commands: list[PayInvoice]) -> list[Any]:
    return await worker.service.command_batch(
        SCOPE, commands, invoices.pay_invoice, invoices.pay_many, defer_inserts=False
    )


@pytest.fixture
async def idle(settings: Settings) -> AsyncIterator[Worker]:
    """A worker not started: no outbox publisher of its own sends statements meanwhile."""
    worker = build_worker(settings)
    yield worker
    await worker.engine.dispose()


async def test_a_batch_of_pays_keeps_each_outcome_and_a_refusal_leaves_nothing_behind(
    idle: Worker,
) -> None:
    worker = idle
    owner, stranger = new_user(), new_user()
    await funded(worker, owner, 1000)  # 10.00
    first, too_big, second = (
        await issued(worker, owner, "3.00"),
        await issued(worker, owner, "8.00"),
        await issued(worker, owner, "2.00"),
    )
    repeated = uuid.uuid4().hex
    commands = [
        pay(owner, first, repeated),
        pay(owner, too_big),  # claimed, then short of funds: only its savepoint rolls back
        pay(owner, second),
        pay(owner, first, repeated),  # the same command again: the first's reply
        pay(owner, first),  # another key for a paid invoice
        pay(stranger, second),  # someone else's invoice: as if it did not exist
    ]

    async with statements(worker.engine) as sent:
        replies = await batch(worker, commands)

    assert all(isinstance(reply, dict) for reply in replies), replies
    assert [reply.get("ok", False) or reply["error"]["code"] for reply in replies] == [
        True, "insufficient_funds", True, True, "invalid_state", "not_found",
    ]  # fmt: skip
    assert replies[3] == replies[0]
    assert replies[1]["error"]["details"]["balance"] == {"amount": "7.00", "currency": "USD"}
    # one transaction for the whole batch, a savepoint for each of the five pays run
    assert sent.count("BEGIN;") == 1, sent
    assert len([q for q in sent if q.startswith("COMMIT")]) == 1, sent
    assert len([q for q in sent if q.startswith("SAVEPOINT")]) == 5, sent
    async with driver_connection(worker.engine) as db:
        statuses = dict(await db.fetch(
            "SELECT id::text, status FROM invoices WHERE id = ANY($1::uuid[])",
            [first, too_big, second],
        ))  # fmt: skip
        balance = await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1", owner
        )
        payments = await db.fetch(
            "SELECT invoice_id::text, amount_minor FROM transactions "
            "WHERE user_id = $1 AND kind = 'invoice_payment' ORDER BY amount_minor",
            owner,
        )
        events = await db.fetch(
            "SELECT type, payload -> 'data' ->> 'invoice_id' AS invoice FROM outbox "
            "WHERE type IN ('invoice.paid', 'payment.success') "
            "AND payload -> 'data' ->> 'user_id' = $1",
            owner,
        )
        records = await db.fetchval(
            "SELECT count(*) FROM idempotency_records WHERE scope LIKE $1 || '|%' "
            "AND key = ANY($2::text[])",
            SCOPE, [c.idempotency_key for c in commands],
        )  # fmt: skip
    assert statuses == {first: "paid", too_big: "open", second: "paid"}
    assert balance == 500
    assert [(p["invoice_id"], p["amount_minor"]) for p in payments] == [(second, 200), (first, 300)]
    paid = sorted(e["invoice"] for e in events if e["type"] == "invoice.paid")
    assert paid == sorted([first, second])  # nothing announced for the refused pay
    assert len([e for e in events if e["type"] == "payment.success"]) == 2
    assert records == 5  # every command's own record, the repeated key's once


async def test_only_pays_from_the_balance_join_a_batch() -> None:
    fits = COALESCED[names.INVOICE_PAY].fits
    card = PayInvoice.model_validate({
        "idempotency_key": "k", "user_id": "u", "invoice_id": str(uuid.uuid4()),
        "source": "stripe",
    })  # fmt: skip
    assert fits(pay("u", str(uuid.uuid4())))
    assert not fits(card)  # it calls its provider: never held behind a batch, nor holding one


async def test_concurrent_pays_through_the_broker_never_overdraw(
    bus: Bus, worker: Worker, database_url: str
) -> None:
    """Twenty invoices of 1.00 and funds for ten, paid all at once, nineteen of them in one
    batch (made, not hoped for: the first pay's batch waits on the account's row lock the
    test holds until the others wait in the coalescer): exactly ten are paid, the rest
    refused with `insufficient_funds` and left open, the balance never below 0."""
    user = new_user()
    await funded(worker, user, 1000)
    ids = [await issued(worker, user, "1.00") for _ in range(20)]
    [route] = [route for route in worker.routes if route.queue == names.INVOICE_PAY]
    coalescer = route.coalescer
    assert isinstance(coalescer, Coalescer), "invoice pays are not coalesced"
    batches, items = coalescer.batches, coalescer.items

    def paying(invoice_id: str) -> asyncio.Task[dict[str, Any]]:
        return asyncio.create_task(bus.call(names.INVOICE_PAY, {
            "idempotency_key": uuid.uuid4().hex, "user_id": user, "invoice_id": invoice_id,
            "source": "balance",
        }))  # fmt: skip

    async with connect(database_url) as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM virtual_accounts WHERE user_id = $1 FOR UPDATE", user)
        calls = [paying(ids[0])]
        await eventually(lambda: _now(coalescer.batches == batches + 1), what="the first batch")
        calls += [paying(invoice_id) for invoice_id in ids[1:]]
        # Private, but the only way to know the rest is all in before the lock goes.
        await eventually(lambda: _now(len(coalescer._waiting) == 19), what="19 waiting")
    replies = await asyncio.gather(*calls)

    assert (coalescer.batches - batches, coalescer.items - items) == (2, 20)
    paid = [r for r in replies if r["ok"]]
    assert len(paid) == 10, replies
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {"insufficient_funds"}
    async with driver_connection(worker.engine) as db:
        assert (
            await db.fetchval("SELECT balance_minor FROM virtual_accounts WHERE user_id = $1", user)
            == 0
        )
        open_left = await db.fetchval(
            "SELECT count(*) FROM invoices WHERE id = ANY($1::uuid[]) AND status = 'open'", ids
        )
        payments = await db.fetchval(
            "SELECT count(*) FROM transactions WHERE user_id = $1 AND kind = 'invoice_payment'",
            user,
        )
    assert (open_left, payments) == (10, 10)


async def _now(value: bool) -> bool:
    return value
