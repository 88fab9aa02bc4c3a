"""An invoice for every paid period, on the real PostgreSQL and RabbitMQ, on a clock moved
by hand: renewals, their races with cancels, a failed renewal's open invoice settled by
dunning or by billing.invoice.pay (never both), and the audit's invoice checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.domain.calendar import add_months
from billing_worker.jobs.renewals import Renewals
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus
from support.subscription_kit import balance, fund, key, plan, subscribe

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 31, 9, 30, tzinfo=UTC)  # renewals until May stay in 2031


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the scheduler renews every due subscription, and the
    invoice numbers of one year are counted whole."""
    return fresh_database_url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def new_user() -> str:
    return f"inv-sub-{uuid.uuid4().hex[:8]}"


def pay(user: str, invoice_id: str) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "invoice_id": invoice_id,
            "source": "balance"}  # fmt: skip


async def invoices_of(worker: Worker, subscription_id: str) -> list[dict[str, Any]]:
    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT id, number, status, period_index, total_minor FROM invoices "
            "WHERE subscription_id = $1 ORDER BY period_index",
            uuid.UUID(subscription_id),
        )
    return [dict(row) for row in rows]


async def charges_of(worker: Worker, subscription_id: str) -> list[int]:
    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT period_index FROM subscription_charges WHERE subscription_id = $1 "
            "ORDER BY period_index",
            uuid.UUID(subscription_id),
        )
    return [row["period_index"] for row in rows]


async def outbox_count(worker: Worker, type_: str, invoice_id: Any) -> int:
    async with driver_connection(worker.engine) as db:
        count = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE type = $1 AND payload->'data'->>'invoice_id' = $2",
            type_, str(invoice_id),
        )  # fmt: skip
    return int(count)


async def invoice_findings(worker: Worker) -> dict[str, list[dict[str, Any]]]:
    """The audit's failed invoice and period checks (this test's database is its own)."""
    async with driver_connection(worker.engine) as db:
        found = await audit(db)
    return {f.check: f.rows for f in found if "invoice" in f.check or "period" in f.check}


async def test_every_renewal_has_its_paid_invoice_with_consecutive_numbers(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "40.00")
    sub = await subscribe(bus, user, code)
    for months in (1, 2, 3):  # the scheduler renews it three times
        clock.set(add_months(START, months))
        assert (await worker.renewals.run_once())["renewed"] == 1

    rows = await invoices_of(worker, sub["id"])
    assert [(r["period_index"], r["status"], r["total_minor"]) for r in rows] == [
        (n, "paid", 1000) for n in range(4)
    ]
    assert [r["number"] for r in rows] == [f"INV-2031-{n:06d}" for n in range(1, 5)]
    listing = await bus.call("billing.invoice.get", {"user_id": user, "limit": 10})
    first = listing["data"]["items"][-1]
    assert (first["subscription_id"], first["period_index"], first["status"]) == (
        sub["id"], 0, "paid",
    )  # fmt: skip
    assert first["lines"] == [{
        "description": "Pro: 2031-01-31 to 2031-02-28", "quantity": 1,
        "unit_price": {"amount": "10.00", "currency": "USD"},
        "amount": {"amount": "10.00", "currency": "USD"},
        # an untaxed plan: no rate, no tax (fields added with tax rates)
        "tax_rate": None, "tax_percent": None, "tax_inclusive": None,
        "tax": {"amount": "0.00", "currency": "USD"},
        "discount": {"amount": "0.00", "currency": "USD"},  # no coupon (added with coupons)
        "proration": None, "credit": None,  # a Stripe mirror's flags: null on ours
    }]  # fmt: skip
    paid = await bus.event("invoice.paid", lambda d: d["user_id"] == user, count=4)
    assert paid["data"]["subscription_id"] == sub["id"]
    for row in rows:
        assert await outbox_count(worker, "invoice.created", row["id"]) == 1
        assert await outbox_count(worker, "invoice.paid", row["id"]) == 1
    assert await invoice_findings(worker) == {}


async def test_renewals_racing_cancels_leave_one_paid_invoice_per_paid_period(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    code = await plan(bus, "1.00")
    users = [new_user() for _ in range(16)]
    for user in users:
        await fund(bus, user, "2.00")  # two periods, then dunning
    subs = [await subscribe(bus, user, code) for user in users]
    rival = Renewals(worker.service, interval_seconds=3600)

    async def cancel(sub: dict[str, Any]) -> dict[str, Any]:
        return await bus.call(
            "billing.subscription.cancel",
            {"idempotency_key": key(), "user_id": sub["user_id"], "subscription_id": sub["id"],
             "at_period_end": False},
        )  # fmt: skip

    for months, cancelled in ((1, subs[:4]), (2, subs[4:10])):  # renewal, then dunning
        clock.set(add_months(START, months))
        results = await asyncio.gather(
            worker.renewals.run_once(), rival.run_once(), *(cancel(s) for s in cancelled)
        )
        assert not any(r.get("error") for r in results[:2]), results

    for sub in subs:
        charged = await charges_of(worker, sub["id"])
        rows = await invoices_of(worker, sub["id"])
        paid = [r["period_index"] for r in rows if r["status"] == "paid"]
        assert paid == charged, (sub["id"], rows)
        assert [r["status"] for r in rows if r["period_index"] not in charged] in (
            [], ["void"], ["open"],
        ), rows  # fmt: skip
    assert await invoice_findings(worker) == {}


async def past_due_all(
    bus: Bus, worker: Worker, clock: ManualClock, users: list[str]
) -> list[dict[str, Any]]:
    """Subscriptions whose first renewal failed, each with its one open invoice (period 1)."""
    code = await plan(bus)
    for user in users:
        await fund(bus, user, "10.00")
    subs = [await subscribe(bus, user, code) for user in users]
    clock.set(datetime.fromisoformat(subs[0]["current_period_end"]))
    assert (await worker.renewals.run_once())["failed"] == len(subs)
    found = []
    for sub in subs:
        rows = await invoices_of(worker, sub["id"])
        assert [(r["period_index"], r["status"]) for r in rows] == [(0, "paid"), (1, "open")]
        found.append({**sub, "invoice_id": str(rows[1]["id"])})
    return found


async def past_due(bus: Bus, worker: Worker, clock: ManualClock, user: str) -> dict[str, Any]:
    [sub] = await past_due_all(bus, worker, clock, [user])
    return sub


async def test_a_failed_renewal_leaves_one_open_invoice_that_dunning_pays(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user = new_user()
    sub = await past_due(bus, worker, clock, user)
    clock.advance(days=1)
    assert (await worker.renewals.run_once())["failed"] == 1  # still dry: the same invoice
    assert len(await invoices_of(worker, sub["id"])) == 2
    await fund(bus, user, "10.00")
    clock.advance(days=2)
    assert (await worker.renewals.run_once())["renewed"] == 1

    rows = await invoices_of(worker, sub["id"])
    assert [(r["period_index"], r["status"]) for r in rows] == [(0, "paid"), (1, "paid")]
    refused = await bus.call("billing.invoice.pay", pay(user, sub["invoice_id"]))
    assert refused["error"]["code"] == "invalid_state"
    assert await balance(bus, user) == "0.00"
    assert await outbox_count(worker, "invoice.paid", sub["invoice_id"]) == 1
    assert await invoice_findings(worker) == {}


async def test_paying_the_open_invoice_renews_the_subscription_once(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user = new_user()
    sub = await past_due(bus, worker, clock, user)
    short = await bus.call("billing.invoice.pay", pay(user, sub["invoice_id"]))
    assert short["error"]["code"] == "insufficient_funds"
    await fund(bus, user, "15.00")

    reply = await bus.call("billing.invoice.pay", pay(user, sub["invoice_id"]))

    assert (reply["data"]["status"], reply["data"]["period_index"]) == ("paid", 1), reply
    got = await bus.call(
        "billing.subscription.get", {"user_id": user, "subscription_id": sub["id"]}
    )
    assert (got["data"]["status"], got["data"]["current_period_end"]) == (
        "active", "2031-03-31T09:30:00Z",
    )  # fmt: skip
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub["id"])
    clock.advance(days=1)  # when dunning would have retried: nothing is due any more
    assert await worker.renewals.run_once() == {}
    assert await charges_of(worker, sub["id"]) == [0, 1]
    assert await balance(bus, user) == "5.00"
    assert await invoice_findings(worker) == {}


async def test_dunning_racing_invoice_pay_settles_each_open_invoice_once(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    subs = await past_due_all(bus, worker, clock, [new_user() for _ in range(8)])
    for sub in subs:
        await fund(bus, sub["user_id"], "25.00")
    rival = Renewals(worker.service, interval_seconds=3600)
    clock.set(datetime.fromisoformat(subs[-1]["current_period_end"]) + timedelta(days=1))

    results = await asyncio.gather(
        worker.renewals.run_once(), rival.run_once(),
        *(bus.call("billing.invoice.pay", pay(s["user_id"], s["invoice_id"])) for s in subs),
    )  # fmt: skip

    replies = results[2:]
    assert all(r["ok"] or r["error"]["code"] == "invalid_state" for r in replies), replies
    for sub in subs:
        assert await charges_of(worker, sub["id"]) == [0, 1]
        assert [r["status"] for r in await invoices_of(worker, sub["id"])] == ["paid", "paid"]
        assert await outbox_count(worker, "invoice.paid", sub["invoice_id"]) == 1
        assert await balance(bus, sub["user_id"]) == "15.00"  # charged once
    assert await invoice_findings(worker) == {}


async def test_the_last_dunning_failure_voids_the_open_invoice(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    user = new_user()
    sub = await past_due(bus, worker, clock, user)
    for day in (1, 3, 5):
        clock.set(datetime.fromisoformat(sub["current_period_end"]) + timedelta(days=day))
        await worker.renewals.run_once()
    voided = await bus.event("invoice.voided", lambda d: d["invoice_id"] == sub["invoice_id"])
    assert (voided["data"]["status"], voided["data"]["reason"]) == (
        "void", "subscription ended: payment_failed",
    )  # fmt: skip
    await fund(bus, user, "10.00")
    refused = await bus.call("billing.invoice.pay", pay(user, sub["invoice_id"]))
    assert refused["error"]["code"] == "invalid_state"
    assert await invoice_findings(worker) == {}


async def test_the_audit_finds_a_paid_period_without_its_invoice_and_wrong_totals(
    bus: Bus, worker: Worker
) -> None:
    user, code = new_user(), await plan(bus)
    await fund(bus, user, "10.00")
    sub = await subscribe(bus, user, code)
    [row] = await invoices_of(worker, sub["id"])
    assert await invoice_findings(worker) == {}
    async with driver_connection(worker.engine) as db:
        try:  # the period's invoice no longer paid
            await db.execute("UPDATE invoices SET status = 'open' WHERE id = $1", row["id"])
            unpaid = await invoice_findings(worker)
        finally:
            await db.execute("UPDATE invoices SET status = 'paid' WHERE id = $1", row["id"])
        try:  # a line that no longer adds up to the total
            await db.execute(
                "UPDATE invoice_lines SET amount_minor = amount_minor + 1 WHERE invoice_id = $1",
                row["id"],
            )
            totals = await invoice_findings(worker)
        finally:
            await db.execute(
                "UPDATE invoice_lines SET amount_minor = amount_minor - 1 WHERE invoice_id = $1",
                row["id"],
            )
    assert set(unpaid) == {"paid period without exactly one paid invoice"}
    assert set(totals) == {"invoice whose total is not the sum of its lines"}
    assert [r["id"] for r in totals["invoice whose total is not the sum of its lines"]] == [
        row["id"]
    ]
    assert await invoice_findings(worker) == {}
