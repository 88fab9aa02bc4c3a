"""Plan versions and `billing.plan.migrate` on the real PostgreSQL and RabbitMQ: a plan edit
leaves its subscribers' price, currency and periods alone while new subscribers get the
new terms, until an admin migrates them from their next period on."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from billing_contracts import names
from billing_contracts.client import BillingClient, CurrencyMismatch, Forbidden
from billing_contracts.money import Money
from billing_contracts.plans import PlanMigration
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.ops.audit_versions import VERSION_CHECKS
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 15, 9, 30, tzinfo=UTC)


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
    # billing.plan.migrate is privileged: open it as local development does
    return make_settings(database_url, rabbitmq_url, credit_without_policy=True)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def key() -> str:
    return uuid.uuid4().hex


def new_user() -> str:
    return f"version-user-{uuid.uuid4().hex[:8]}"


async def upsert(bus: Bus, code: str, price: str, interval: str, **extra: Any) -> dict[str, Any]:
    currency = extra.pop("currency", "USD")
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": interval,
         "price": {"amount": price, "currency": currency}, **extra},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def subscriber(bus: Bus, code: str, funds: str = "100.00") -> dict[str, Any]:
    user = new_user()
    deposit = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": key(), "user_id": user,
         "amount": {"amount": funds, "currency": "USD"}},
    )  # fmt: skip
    transaction_id = deposit["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
    reply = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "balance"},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]["subscription"]  # type: ignore[no-any-return]


async def reread(bus: Bus, sub: dict[str, Any]) -> dict[str, Any]:
    reply = await bus.call(
        "billing.subscription.get", {"user_id": sub["user_id"], "subscription_id": sub["id"]}
    )
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def balance(bus: Bus, user: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    return str(reply["data"]["accounts"][0]["balance"]["amount"])


async def migrate(
    rabbitmq_url: str, code: str, to_version: int, idempotency_key: str | None = None
) -> PlanMigration:
    async with BillingClient(rabbitmq_url, timeout=30) as billing:  # sets the AMQP user_id
        return await billing.migrate_plan(
            plan_code=code, to_version=to_version, idempotency_key=idempotency_key or key()
        )


async def renew_at(worker: Worker, clock: ManualClock, at: str) -> None:
    clock.set(datetime.fromisoformat(at))
    outcome = await worker.renewals.run_once()
    assert outcome["renewed"] >= 1, outcome
    assert not outcome["error"], outcome


async def charged_versions(worker: Worker, sub_id: str) -> list[tuple[int, int, str, str]]:
    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT c.period_index, p.version, c.period_start, c.period_end "
            "FROM subscription_charges c JOIN plans p ON p.id = c.plan_id "
            "WHERE c.subscription_id = $1 ORDER BY c.period_index",
            uuid.UUID(sub_id),
        )
    return [
        (r["period_index"], r["version"], r["period_start"].isoformat()[:10],
         r["period_end"].isoformat()[:10])
        for r in rows
    ]  # fmt: skip


async def test_an_edit_leaves_subscribers_terms_until_a_migration_moves_them(
    bus: Bus, worker: Worker, clock: ManualClock, rabbitmq_url: str
) -> None:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    assert (await upsert(bus, code, "10.00", "month"))["version"] == 1
    old = await subscriber(bus, code)
    assert (old["plan_version"], old["current_period_end"]) == (1, "2031-02-15T09:30:00Z")

    edited = await upsert(bus, code, "15.00", "year")
    assert (edited["version"], edited["price"]["amount"]) == (2, "15.00")
    new = await subscriber(bus, code)
    assert (new["plan_version"], new["current_period_end"]) == (2, "2032-01-15T09:30:00Z")
    assert await balance(bus, new["user_id"]) == "85.00"
    assert await reread(bus, old) == old
    listed = await bus.call("billing.plan.list", {"code": code})
    assert [p["version"] for p in listed["data"]["plans"]] == [1, 2]
    current = await bus.call("billing.plan.list", {})
    assert [p["version"] for p in current["data"]["plans"] if p["code"] == code] == [2]
    again = await bus.call(  # one live subscription per user and plan code, on any version
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": old["user_id"], "plan_code": code,
         "payment_source": "balance"},
    )  # fmt: skip
    assert again["error"]["code"] == "invalid_state", again

    await renew_at(worker, clock, old["current_period_end"])  # still monthly, still 10.00
    renewed = await reread(bus, old)
    assert (renewed["current_period_end"], renewed["plan_version"]) == ("2031-03-15T09:30:00Z", 1)
    assert await balance(bus, old["user_id"]) == "80.00"

    result = await migrate(rabbitmq_url, code, 2)
    assert (result.moved, result.skipped, result.to_version) == (1, [], 2)
    updated = await bus.event("subscription.updated", lambda d: d["subscription_id"] == old["id"])
    assert (updated["data"]["from_plan_version"], updated["data"]["plan_version"]) == (1, 2)
    assert updated["data"]["effective_at"] == "2031-03-15T09:30:00Z"
    moved = await reread(bus, old)
    assert moved["plan_version"] == 2
    assert (moved["current_period_start"], moved["current_period_end"]) == (
        renewed["current_period_start"],
        renewed["current_period_end"],
    )  # fmt: skip  (the paid period stays)

    await renew_at(worker, clock, moved["current_period_end"])  # the new terms, re-anchored
    last = await reread(bus, old)
    assert (last["current_period_start"], last["current_period_end"]) == (
        "2031-03-15T09:30:00Z", "2032-03-15T09:30:00Z",
    )  # fmt: skip
    assert await balance(bus, old["user_id"]) == "65.00"
    assert await charged_versions(worker, old["id"]) == [
        (0, 1, "2031-01-15", "2031-02-15"),
        (1, 1, "2031-02-15", "2031-03-15"),
        (2, 2, "2031-03-15", "2032-03-15"),
    ]
    async with driver_connection(worker.engine) as db:
        assert await audit(db) == []
        await db.execute(  # a period charged on a version it was not on: the audit sees it
            "UPDATE subscription_charges c SET plan_id = s.plan_id FROM subscriptions s "
            "WHERE s.id = c.subscription_id AND c.subscription_id = $1 AND c.period_index = 0",
            uuid.UUID(old["id"]),
        )
        findings = await audit(db)
    assert [f.check for f in findings] == [next(iter(VERSION_CHECKS))]


async def test_a_retried_migration_replays_its_reply_and_moves_nobody_twice(
    bus: Bus, worker: Worker, rabbitmq_url: str
) -> None:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    await upsert(bus, code, "10.00", "month")
    subs = [await subscriber(bus, code) for _ in range(2)]
    await upsert(bus, code, "12.00", "month")
    retry = key()
    first = await migrate(rabbitmq_url, code, 2, retry)
    second = await migrate(rabbitmq_url, code, 2, retry)
    assert first == second
    assert first.moved == 2
    for sub in subs:
        assert (await reread(bus, sub))["plan_version"] == 2
    await bus.event("subscription.updated", count=2)
    async with driver_connection(worker.engine) as db:
        assert await db.fetchval("SELECT count(*) FROM subscription_plan_changes") == 2
    fresh = await migrate(rabbitmq_url, code, 2)  # a new key: nobody is left on version 1
    assert (fresh.moved, fresh.skipped) == (0, [])


async def test_a_currency_change_across_a_migration_is_refused(
    bus: Bus, worker: Worker, rabbitmq_url: str
) -> None:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    await upsert(bus, code, "10.00", "month")
    sub = await subscriber(bus, code)
    assert (await upsert(bus, code, "10.00", "month", currency="EUR"))["version"] == 2
    with pytest.raises(CurrencyMismatch):
        await migrate(rabbitmq_url, code, 2)
    assert (await reread(bus, sub))["plan_version"] == 1
    async with driver_connection(worker.engine) as db:
        assert await db.fetchval("SELECT count(*) FROM subscription_plan_changes") == 0


async def test_a_plan_wildcard_lets_a_user_edit_plans_but_not_migrate_them(
    database_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    me = urlsplit(rabbitmq_url).username or "guest"
    path = tmp_path / "policy.toml"
    allow = ["billing.plan.*", "billing.wallet.*", "billing.subscription.*"]
    path.write_text(f'[users."{me}"]\nallow = {json.dumps(allow)}\n')
    worker = build_worker(make_settings(database_url, rabbitmq_url, access_policy=path))
    async with worker.app, BillingClient(rabbitmq_url, timeout=30) as billing:
        code = f"plan-{uuid.uuid4().hex[:8]}"
        for price in ("10.00", "12.00"):
            await billing.upsert_plan(
                code=code, name="Pro", interval="month", idempotency_key=key(),
                price=Money(amount=price, currency="USD"),
            )  # fmt: skip
        with pytest.raises(Forbidden) as refused:
            await billing.migrate_plan(plan_code=code, to_version=2, idempotency_key=key())
        assert refused.value.message == f"broker user {me!r} may not send to {names.PLAN_MIGRATE}"
        async with driver_connection(worker.engine) as db:
            assert await db.fetchval("SELECT count(*) FROM subscription_plan_changes") == 0


async def test_concurrent_edits_of_one_plan_each_get_a_version_of_their_own(bus: Bus) -> None:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    await upsert(bus, code, "10.00", "month")
    prices = [f"{11 + n}.00" for n in range(6)]
    replies = await asyncio.gather(*(upsert(bus, code, price, "month") for price in prices))
    versions = {r["price"]["amount"]: r["version"] for r in replies}
    assert sorted(versions.values()) == list(range(2, 2 + len(prices))), replies
    listed = await bus.call("billing.plan.list", {"code": code})
    stored = {p["version"]: p for p in listed["data"]["plans"]}
    assert sorted(stored) == list(range(1, 2 + len(prices)))  # none lost, none doubled
    for price, version in versions.items():
        assert stored[version]["price"]["amount"] == price
