"""`billing.subscription.change-plan` on the real PostgreSQL and RabbitMQ: a prorated
upgrade and downgrade mid-period with exact figures, a redelivered command, seats, and a
change at the period end that the renewal applies; the audit stays clean."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_contracts.client import BillingClient
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus
from support.settings import make_settings
from support.subscription_kit import balance, fund, key, plan, subscribe

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 1, tzinfo=UTC)  # period 0: Jan 1 - Feb 1, 31 days


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the renewal scheduler renews every due subscription,
    and the audit judges the whole database."""
    return fresh_database_url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    # billing.tax-rate.upsert is privileged: open it as local development does
    return make_settings(database_url, rabbitmq_url, credit_without_policy=True)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def change(user: str, sub: dict[str, Any], code: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "subscription_id": sub["id"],
            "plan_code": code, **extra}  # fmt: skip


async def test_prorated_upgrade_and_downgrade_mid_period_with_exact_figures(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    pro, team = await plan(bus, "10.00"), await plan(bus, "25.00")
    user = f"change-user-{uuid.uuid4().hex[:8]}"
    await fund(bus, user, "100.00")
    sub = await subscribe(bus, user, pro)
    clock.advance(days=10)  # 21 of 31 days left

    upgrade = change(user, sub, team, quantity=2)
    first = await bus.call("billing.subscription.change-plan", upgrade)
    assert first["ok"], first
    assert (first["data"]["plan_code"], first["data"]["quantity"]) == (team, 2)
    # (2500 x 2 - 1000) x 21 / 31 = 2709.68 -> 2710
    assert await balance(bus, user) == "62.90"
    again = await bus.call("billing.subscription.change-plan", upgrade)  # redelivered
    assert again == first
    assert await balance(bus, user) == "62.90"
    updated = await bus.event("subscription.updated", lambda d: d["subscription_id"] == sub["id"])
    assert updated["data"]["proration_charged"] == {"amount": "27.10", "currency": "USD"}
    assert (updated["data"]["from_plan_code"], updated["data"]["from_quantity"]) == (pro, 1)

    downgrade = await bus.call(
        "billing.subscription.change-plan", change(user, sub, pro, quantity=1)
    )
    assert downgrade["ok"], downgrade
    assert await balance(bus, user) == "90.00"  # the same 27.10 credited back

    refused = await bus.call(  # nothing changes
        "billing.subscription.change-plan", change(user, sub, pro, quantity=1)
    )
    assert refused["error"]["code"] == "invalid_message", refused
    stranger = await bus.call("billing.subscription.change-plan", change("someone-else", sub, team))
    assert stranger["error"]["code"] == "not_found", stranger

    async with driver_connection(worker.engine) as db:
        invoices = await db.fetch(
            "SELECT status, total_minor FROM invoices WHERE subscription_id IS NULL"
        )
        assert [(r["status"], r["total_minor"]) for r in invoices] == [("paid", 2710)]
        changes = await db.fetch(
            "SELECT kind, from_quantity, to_quantity, proration_minor, from_period_index "
            "FROM subscription_plan_changes ORDER BY id"
        )
        assert [tuple(r) for r in changes] == [
            ("change_plan", 1, 2, 2710, 1),
            ("change_plan", 2, 1, -2710, 1),
        ]
        assert await audit(db) == []


async def test_a_change_at_the_period_end_is_applied_by_the_renewal(
    bus: Bus, worker: Worker, clock: ManualClock
) -> None:
    pro, team = await plan(bus, "10.00"), await plan(bus, "25.00")
    user = f"change-user-{uuid.uuid4().hex[:8]}"
    await fund(bus, user, "100.00")
    sub = await subscribe(bus, user, pro)
    clock.advance(days=3)
    reply = await bus.call(
        "billing.subscription.change-plan",
        change(user, sub, team, quantity=3, when="period_end"),
    )
    assert reply["ok"], reply
    scheduled = reply["data"]
    assert (scheduled["plan_code"], scheduled["scheduled_plan_code"],
            scheduled["scheduled_quantity"]) == (pro, team, 3)  # fmt: skip
    assert await balance(bus, user) == "90.00"

    clock.set(START + timedelta(days=31))  # Feb 1: the renewal applies it, then charges
    outcome = await worker.renewals.run_once()
    assert outcome["renewed"] == 1, outcome
    assert await balance(bus, user) == "15.00"  # 3 x 25.00
    got = await bus.call(
        "billing.subscription.get", {"user_id": user, "subscription_id": sub["id"]}
    )
    assert (got["data"]["plan_code"], got["data"]["quantity"],
            got["data"]["scheduled_plan_code"]) == (team, 3, None)  # fmt: skip
    async with driver_connection(worker.engine) as db:
        charged = await db.fetch(
            "SELECT c.period_index, p.code FROM subscription_charges c "
            "JOIN plans p ON p.id = c.plan_id WHERE c.subscription_id = $1 "
            "ORDER BY c.period_index",
            uuid.UUID(sub["id"]),
        )
        assert [tuple(r) for r in charged] == [(0, pro), (1, team)]
        assert await audit(db) == []


async def test_a_downgrade_credit_is_taxed_at_the_rate_its_paid_period_was_charged_at(
    bus: Bus, worker: Worker, clock: ManualClock, rabbitmq_url: str
) -> None:
    async with BillingClient(rabbitmq_url, timeout=30) as billing:  # sets the AMQP user_id
        for code, percent in (("vat", "20"), ("low", "10")):
            await billing.upsert_tax_rate(
                code=code, name=code.upper(), percent=percent, inclusive=False,
                idempotency_key=key(),
            )  # fmt: skip
    team, pro = await plan(bus, "25.00", tax_rate="vat"), await plan(bus, "10.00")
    user = f"change-user-{uuid.uuid4().hex[:8]}"
    await fund(bus, user, "30.00")
    sub = await subscribe(bus, user, team)  # 25.00 + 20 % paid
    assert await balance(bus, user) == "0.00"
    terms = {"idempotency_key": key(), "code": team, "name": "Pro", "interval": "month",
             "price": {"amount": "25.00", "currency": "USD"}, "tax_rate": "low"}  # fmt: skip
    assert (await bus.call("billing.plan.upsert", terms))["data"]["version"] == 2
    none = await bus.call(
        "billing.subscription.change-plan", change(user, sub, team, proration="none")
    )
    assert none["ok"], none  # on version 2 (10 %) from the next period
    clock.advance(days=10)  # 21 of 31 days left

    downgrade = await bus.call("billing.subscription.change-plan", change(user, sub, pro))

    assert downgrade["ok"], downgrade
    # 1500 x 21/31 = 1016.13 -> 1016 net, + the paid period's 20 % (203): 12.19 back
    assert await balance(bus, user) == "12.19"
    async with driver_connection(worker.engine) as db:
        assert await audit(db) == []
