"""Voiding, writing off and the overdue job on the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.jobs.invoice_overdue import InvoiceOverdue
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus

pytestmark = pytest.mark.integration

START = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def key() -> str:
    return uuid.uuid4().hex


def new_user() -> str:
    return f"inv-life-{uuid.uuid4().hex[:8]}"


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


async def fund(bus: Bus, user: str, amount: str) -> None:
    reply = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": key(), "user_id": user, "amount": usd(amount)},
    )
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def issue(bus: Bus, user: str, price: str = "20.00", **extra: Any) -> dict[str, Any]:
    reply = await bus.call(
        "billing.invoice.create",
        {"idempotency_key": key(), "user_id": user, "currency": "USD",
         "lines": [{"description": "Consulting", "quantity": 1, "unit_price": usd(price)}],
         **extra},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


def on(user: str, invoice_id: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "invoice_id": invoice_id, **extra}


async def balance(bus: Bus, user: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    return str(reply["data"]["accounts"][0]["balance"]["amount"])


async def outbox_count(worker: Worker, type_: str, invoice_id: str) -> int:
    async with driver_connection(worker.engine) as db:
        count = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE type = $1 AND payload->'data'->>'invoice_id' = $2",
            type_, invoice_id,
        )  # fmt: skip
    return int(count)


async def test_a_void_invoice_keeps_its_number_and_cannot_be_paid(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "50.00")
    invoice = await issue(bus, user)

    voided = await bus.call("billing.invoice.void", on(user, invoice["id"], reason="duplicate"))

    assert voided["ok"], voided
    data = voided["data"]
    assert (data["status"], data["number"], data["reason"]) == ("void", invoice["number"],
                                                                "duplicate")  # fmt: skip
    assert data["voided_at"] is not None
    event = await bus.event("invoice.voided", lambda d: d["invoice_id"] == invoice["id"])
    assert event["data"]["reason"] == "duplicate"
    paying = await bus.call("billing.invoice.pay", on(user, invoice["id"], source="balance"))
    assert paying["error"]["code"] == "invalid_state"
    got = await bus.call("billing.invoice.get", {"user_id": user, "invoice_id": invoice["id"]})
    assert got["data"] == data
    assert await balance(bus, user) == "50.00"


async def test_a_paid_invoice_cannot_be_voided_and_others_are_not_found(bus: Bus) -> None:
    owner, other = new_user(), new_user()
    await fund(bus, owner, "50.00")
    invoice = await issue(bus, owner)
    assert (await bus.call("billing.invoice.pay", on(owner, invoice["id"], source="balance")))["ok"]

    refused = await bus.call("billing.invoice.void", on(owner, invoice["id"], reason="late"))
    assert refused["error"]["code"] == "invalid_state"
    assert refused["error"]["details"] == {"status": "paid", "requested": "void"}
    replies = []
    for invoice_id in (invoice["id"], str(uuid.uuid4())):
        for queue, extra in (("billing.invoice.void", {"reason": "x"}),
                             ("billing.invoice.mark-uncollectible", {})):  # fmt: skip
            reply = await bus.call(queue, on(other, invoice_id, **extra))
            error = reply["error"]
            replies.append((error["code"], error["message"].replace(invoice_id, "<id>"),
                            error["details"] == {"invoice_id": invoice_id}))  # fmt: skip
    assert set(replies) == {("not_found", "no invoice <id>", True)}


async def test_an_uncollectible_invoice_can_still_be_paid(bus: Bus) -> None:
    user = new_user()
    invoice = await issue(bus, user)
    written_off = await bus.call("billing.invoice.mark-uncollectible", on(user, invoice["id"]))
    assert (written_off["data"]["status"], written_off["data"]["reason"]) == ("uncollectible",
                                                                              None)  # fmt: skip
    await bus.event("invoice.uncollectible", lambda d: d["invoice_id"] == invoice["id"])
    await fund(bus, user, "20.00")

    paid = await bus.call("billing.invoice.pay", on(user, invoice["id"], source="balance"))

    assert paid["data"]["status"] == "paid", paid
    assert paid["data"]["uncollectible_at"] == written_off["data"]["uncollectible_at"]
    assert await balance(bus, user) == "0.00"


async def test_two_overdue_jobs_announce_each_overdue_invoice_once(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user = new_user()
    await fund(bus, user, "100.00")
    due = (START + timedelta(days=7)).isoformat()
    made = [await issue(bus, user, "1.00", due_at=due) for _ in range(12)]
    paid, voided, written_off, open_ = made[0], made[1], made[2], made[3:]
    assert (await bus.call("billing.invoice.pay", on(user, paid["id"], source="balance")))["ok"]
    assert (await bus.call("billing.invoice.void", on(user, voided["id"], reason="x")))["ok"]
    assert (await bus.call("billing.invoice.mark-uncollectible", on(user, written_off["id"])))["ok"]
    jobs = [InvoiceOverdue(worker.service, interval_seconds=3600, batch=2) for _ in range(2)]
    await asyncio.gather(*(job.run_once() for job in jobs))  # not due yet: none of these
    for invoice in made:  # (the database's other tests' invoices may be due: not counted)
        assert await outbox_count(worker, "invoice.overdue", invoice["id"]) == 0

    clock.set(START + timedelta(days=8))
    await asyncio.gather(*(job.run_once() for job in jobs), worker.invoice_overdue.run_once())
    await asyncio.gather(*(job.run_once() for job in jobs))  # and again: nothing new

    for invoice in open_:
        assert await outbox_count(worker, "invoice.overdue", invoice["id"]) == 1
        got = await bus.call("billing.invoice.get", {"user_id": user, "invoice_id": invoice["id"]})
        assert (got["data"]["status"], got["data"]["overdue_at"]) == (
            "open", "2031-06-09T12:00:00Z",
        )  # fmt: skip
    for invoice in (paid, voided, written_off):
        assert await outbox_count(worker, "invoice.overdue", invoice["id"]) == 0
    await bus.event("invoice.overdue", lambda d: d["user_id"] == user, count=len(open_))


async def test_a_payment_racing_a_void_ends_one_way_only(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "100.00")
    made = [await issue(bus, user, "5.00") for _ in range(10)]

    replies = await asyncio.gather(*(
        call for invoice in made for call in (
            bus.call("billing.invoice.pay", on(user, invoice["id"], source="balance")),
            bus.call("billing.invoice.void", on(user, invoice["id"], reason="race")),
        )
    ))  # fmt: skip

    paid = 0
    for invoice, (paying, voiding) in zip(made, zip(replies[::2], replies[1::2], strict=True),
                                          strict=True):  # fmt: skip
        assert paying["ok"] != voiding["ok"], (paying, voiding)
        loser = voiding if paying["ok"] else paying
        assert loser["error"]["code"] == "invalid_state"
        got = await bus.call("billing.invoice.get", {"user_id": user, "invoice_id": invoice["id"]})
        assert got["data"]["status"] == ("paid" if paying["ok"] else "void")
        paid += bool(paying["ok"])
    assert await balance(bus, user) == f"{100 - 5 * paid}.00"
