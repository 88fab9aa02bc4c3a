"""A prorated change-plan of a YooKassa subscription over the bus, through the real SDK
against the YooKassa HTTP fake, confirmed via the relay, on PostgreSQL and RabbitMQ: the
upgrade's proration is charged with the saved card and the plan switches only on
YooKassa's confirmation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

START = datetime(2027, 1, 1, tzinfo=UTC)  # a 31-day January


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Its own database: the audit at the end reads every row."""
    return fresh_database_url


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


async def call(bus: Bus, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    reply = await bus.call(name, {"idempotency_key": key(), **payload})
    return dict(reply)


async def ok(bus: Bus, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    reply = await call(bus, name, payload)
    assert reply["ok"], reply
    return dict(reply["data"])


async def plans(bus: Bus) -> tuple[str, str]:
    codes = []
    for price in ("499.00", "999.00"):
        code = f"ykc-{uuid.uuid4().hex[:8]}"
        await ok(bus, "billing.plan.upsert", {
            "code": code, "name": code, "interval": "month",
            "price": {"amount": price, "currency": "RUB"},
        })  # fmt: skip
        codes.append(code)
    return codes[0], codes[1]


async def active(bus: Bus, relay: Relay, fake: FakeYooKassa, user: str, code: str) -> str:
    """A subscription whose first payment (a redirect) succeeded and saved the card."""
    data = await ok(bus, "billing.subscription.create", {
        "user_id": user, "plan_code": code, "payment_source": "yookassa",
        "return_url": "https://shop.example/back",
    })  # fmt: skip
    sub_id = str(data["subscription"]["id"])
    [first] = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    fake.pay(first["id"])
    await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    for _ in range(100):
        if (await subscription(bus, user, sub_id))["status"] == "active":
            return sub_id
        await asyncio.sleep(0.1)
    raise AssertionError("the subscription never became active")


async def subscription(bus: Bus, user: str, sub_id: str) -> dict[str, Any]:
    reply = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    return dict(reply["data"])


async def invoice(bus: Bus, user: str, invoice_id: str) -> dict[str, Any]:
    reply = await bus.call("billing.invoice.get", {"user_id": user, "invoice_id": invoice_id})
    return dict(reply["data"])


def change(user: str, sub_id: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "subscription_id": sub_id, "plan_code": code, **extra}


def method_of(fake: FakeYooKassa, user: str) -> str:
    first = next(p for p in fake.payments.values() if p["metadata"]["user_id"] == user)
    return str(first["payment_method"]["id"])


def proration_payment(fake: FakeYooKassa, user: str, amount: str) -> dict[str, Any]:
    [payment] = [
        p for p in fake.payments.values()
        if p["metadata"]["user_id"] == user and p["amount"]["value"] == amount
    ]  # fmt: skip
    return payment


async def test_an_upgrade_switches_only_when_yookassa_confirms_its_proration_once(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    pro, team = await plans(bus)
    user = f"ykc-{uuid.uuid4().hex[:8]}"
    sub_id = await active(bus, relay, fake, user, pro)
    fake.pending_methods.add(method_of(fake, user))  # the bank is slow to answer
    clock.advance(days=10)  # 21 of January's 31 days left

    data = await ok(bus, "billing.subscription.change-plan", change(user, sub_id, team))

    # (99900 - 49900) x 21/31 = 33870.97 -> 33871: 338.71, untaxed
    payment = proration_payment(fake, user, "338.71")
    assert payment["payment_method"]["id"] == method_of(fake, user)
    assert payment["status"] == "pending"
    assert (data["plan_code"], data["pending_plan_code"], data["pending_quantity"]) == (
        pro, team, 1)  # fmt: skip
    pending_invoice = await invoice(bus, user, data["pending_invoice_id"])
    assert (pending_invoice["status"], pending_invoice["total"]) == (
        "open", {"amount": "338.71", "currency": "RUB"})  # fmt: skip
    again = await call(bus, "billing.subscription.change-plan",
                       change(user, sub_id, team, quantity=2))  # fmt: skip
    assert again["error"]["code"] == "invalid_state", again
    now = {"user_id": user, "subscription_id": sub_id, "at_period_end": False}
    cancel = await call(bus, "billing.subscription.cancel", now)
    assert cancel["error"]["code"] == "invalid_state", cancel

    # a forged notification (succeeded, while YooKassa says pending) changes nothing
    forged = json.loads(fake.notification("payment.succeeded", payment["id"]))
    forged["object"]["status"] = "succeeded"
    forged["object"]["paid"] = True
    await relay.yookassa(json.dumps(forged).encode())
    await asyncio.sleep(0.5)  # give a wrongly applied notification the time to show
    still = await subscription(bus, user, sub_id)
    assert (still["plan_code"], still["pending_plan_code"]) == (pro, team)

    fake.pay(payment["id"])
    body = fake.notification("payment.succeeded", payment["id"])
    assert (await relay.yookassa(body)).status_code == 200
    assert (await relay.yookassa(body)).status_code == 200  # duplicated
    updated = await bus.event("subscription.updated", lambda d: d["subscription_id"] == sub_id)
    assert updated["data"]["proration_charged"] == {"amount": "338.71", "currency": "RUB"}

    switched = await subscription(bus, user, sub_id)
    assert (switched["plan_code"], switched["pending_plan_code"]) == (team, None)
    assert switched["pending_invoice_id"] is None
    assert (await invoice(bus, user, data["pending_invoice_id"]))["status"] == "paid"
    async with driver_connection(worker.engine) as db:
        moves = await db.fetch(
            "SELECT kind, status, amount_minor FROM transactions WHERE user_id = $1 "
            "ORDER BY created_at, kind", user,
        )  # fmt: skip
        changes = await db.fetch(
            "SELECT proration_minor, from_period_index FROM subscription_plan_changes "
            "WHERE subscription_id = $1", uuid.UUID(sub_id),
        )  # fmt: skip
        balance = await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1 AND currency = 'RUB'",
            user,
        )
        assert not await audit(db)
    assert [(m["kind"], m["status"], m["amount_minor"]) for m in moves] == [
        ("subscription_charge", "completed", 49900),
        ("deposit", "completed", 33871), ("invoice_payment", "completed", 33871),
    ]  # fmt: skip
    assert [(c["proration_minor"], c["from_period_index"]) for c in changes] == [(33871, 1)]
    assert balance == 0


async def test_a_declined_or_expired_proration_payment_changes_nothing(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    pro, team = await plans(bus)
    user = f"ykc-{uuid.uuid4().hex[:8]}"
    sub_id = await active(bus, relay, fake, user, pro)
    method = method_of(fake, user)
    clock.advance(days=10)

    # pending, then YooKassa cancels it (expired): dropped, the invoice void
    fake.pending_methods.add(method)
    data = await ok(bus, "billing.subscription.change-plan", change(user, sub_id, team))
    expired = proration_payment(fake, user, "338.71")
    fake.cancel(expired["id"], reason="expired_on_confirmation")
    await relay.yookassa(fake.notification("payment.canceled", expired["id"]))
    await bus.event("invoice.voided", lambda d: d["invoice_id"] == data["pending_invoice_id"])
    after = await subscription(bus, user, sub_id)
    assert (after["plan_code"], after["pending_plan_code"]) == (pro, None)

    # declined at once by the bank: the reply shows nothing changed, the invoice void
    fake.pending_methods.discard(method)
    fake.declining_methods.add(method)
    declined = await ok(bus, "billing.subscription.change-plan", change(user, sub_id, team))
    assert (declined["plan_code"], declined["pending_plan_code"]) == (pro, None)
    async with driver_connection(worker.engine) as db:
        statuses = await db.fetch(
            "SELECT status FROM invoices WHERE user_id = $1 AND subscription_id IS NULL", user
        )
        changes = await db.fetchval(
            "SELECT count(*) FROM subscription_plan_changes WHERE subscription_id = $1",
            uuid.UUID(sub_id),
        )
        assert not await audit(db)
    assert sorted(s["status"] for s in statuses) == ["void", "void"]
    assert changes == 0
    assert (await subscription(bus, user, sub_id))["plan_code"] == pro
