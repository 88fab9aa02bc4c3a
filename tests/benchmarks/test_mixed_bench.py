"""The mixed and rss benchmarks work end to end, and the mixed check catches a wrong run.

No timing is asserted: the machines are shared and noisy. The short runs prove that the
mixed scenario (both sides) and the RSS run are measured, checked and reported; the
checker tests take one right run of the mix through the real worker and prove that a
tampered balance, a missing invoice, duplicated or crossed replies, a second completion,
a lost idempotency record, an unpublished event or a message left behind fail it.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from benchmarks import env as services
from benchmarks import mixed, rss
from benchmarks.mixed import (
    BALANCE,
    DEFAULT_MIX,
    DEPOSIT,
    FLOOR_DEPOSIT,
    HISTORY,
    KINDS,
    ORDER,
    SUBSCRIBE,
    WITHDRAW,
    MixedLoad,
    MixedObserved,
    MixedPlan,
    check_mixed,
)
from benchmarks.procs import start_workers
from benchmarks.scenario import Options
from billing_contracts import names

pytestmark = pytest.mark.integration


def amqp_base() -> str:
    base = os.environ.get("BILLING_TEST_RABBITMQ_URL", services.DEFAULT_AMQP)
    parts = urlsplit(base)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 3).close()
    except OSError:
        pytest.skip(f"no RabbitMQ at {parts.hostname}:{parts.port}")
    return base


def options(postgres_server: str, logs: Path) -> Options:
    """~2 s windows, no warm-up, 200 accounts: a short run whose figures mean nothing."""
    return Options(dsn=postgres_server, amqp=amqp_base(), logs=logs, seconds=2.0, warmup=0.0,
                   accounts=200)  # fmt: skip


def name(what: str) -> str:
    return f"bench_{what}_{uuid.uuid4().hex[:10]}"


# --- short runs ---------------------------------------------------------------------------


async def test_a_short_mixed_run_of_the_worker_passes_its_check_and_reports_every_kind(
    postgres_server: str, tmp_path: Path
) -> None:
    result = await mixed.run_mixed(
        "worker", 1, name("mixed_w"), options(postgres_server, tmp_path), messages=400
    )

    assert result["ok"], result["problems"]
    assert result["scenario"] == "mixed"
    assert result["side"] == "worker"
    assert {"consumer", "postgres", "rabbitmq", "loadgen"} <= set(result["cpu_s"])
    assert set(result["per_kind"]) == set(KINDS)
    for kind, figures in result["per_kind"].items():
        assert figures["msgs_per_s"] is not None, kind
        assert figures["p50_ms"] is not None, kind
        assert figures["p99_ms"] is not None, kind
    assert set(result["query_p99_ms"]) == {BALANCE, HISTORY}
    assert result["withdraw_msgs_per_s"] == result["per_kind"][WITHDRAW]["msgs_per_s"]
    assert result["msgs_per_s"] is not None
    half = result["half_saturation"]
    assert half["target_msgs_per_s"] == round(result["msgs_per_s"] / 2, 1)
    assert set(half["per_kind"]) == set(KINDS)
    assert all(half["per_kind"][kind]["sent"] > 0 for kind in KINDS)
    assert sum(result["prefilled"].values()) == 400
    assert result["prefilled"][WITHDRAW] == 160  # 40 of every 100
    json.dumps(result)  # JSON as run.py writes it


async def test_a_short_mixed_run_of_the_floor_reports_its_withdraw_rate(
    postgres_server: str, tmp_path: Path
) -> None:
    result = await mixed.run_mixed(
        "floor", 1, name("mixed_f"), options(postgres_server, tmp_path), messages=500
    )

    assert result["ok"], result["problems"]
    assert result["side"] == "floor"
    assert set(result["per_kind"]) == {WITHDRAW, FLOOR_DEPOSIT}
    assert result["withdraw_msgs_per_s"] is not None
    assert result["sent"] == {WITHDRAW: 400, FLOOR_DEPOSIT: 100}  # the mix's 40:10
    assert result["query_p99_ms"] == {}


async def test_a_short_rss_run_reports_samples_and_passes_its_check(
    postgres_server: str, tmp_path: Path
) -> None:
    result = await rss.run_rss(1, name("rss"), options(postgres_server, tmp_path), minutes=0.2)

    assert result["ok"], result["problems"]
    assert result["rss_mb_max"] > 0
    assert result["rss_mb_at"][0][0] == 0
    assert len(result["rss_mb_at"]) >= 2
    assert all(mb > 0 for _, mb in result["rss_mb_at"])
    assert result["rss_growth_mb_last_3_min"] is not None
    assert result["withdraws"] > 0
    assert result["deposits"] > 0


# --- the check ----------------------------------------------------------------------------


@dataclass
class Applied:
    """One right run of a small mix through the real worker, kept as a template."""

    base_dsn: str
    template: str
    plan: MixedPlan
    seen: MixedObserved
    problems: list[str]


@pytest.fixture(scope="module")
async def applied(
    postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Applied]:
    run_env = services.run_env(postgres_server, amqp_base(), name("mixcheck"))
    await services.create(run_env, amqp_base())
    try:
        db = await asyncpg.connect(run_env.dsn)
        plan = MixedPlan(run_env.name, 30, DEFAULT_MIX, seed=3)
        await plan.seed(db)
        load = MixedLoad(plan)
        await load.connect(run_env.amqp)
        consumer = await start_workers(run_env, 1, {}, tmp_path_factory.mktemp("logs"))
        problems: list[str] = []
        try:
            await load.upsert_plans(consumer, 60)
            await load.prefill([plan.new(kind) for kind in plan.kinds(100)])
            await load.wait_all(60)
            await mixed.settle_outbox(db, 10)
        finally:
            problems += await consumer.stop()
        await load.count_leftovers(mixed.MIXED_QUEUES)
        await load.close()
        await db.close()
        yield Applied(postgres_server, run_env.name, plan, load.seen, problems)
    finally:
        await services.destroy(run_env, postgres_server, amqp_base())


@dataclass
class Copy:
    db: asyncpg.Connection
    plan: MixedPlan
    seen: MixedObserved


@pytest.fixture
async def run(applied: Applied) -> AsyncIterator[Copy]:
    """A copy of the right run (database and observations) for a test to break."""
    admin = await asyncpg.connect(services.asyncpg_dsn(applied.base_dsn))
    copied = name("mixcopy")
    try:
        await admin.execute(f'CREATE DATABASE "{copied}" TEMPLATE "{applied.template}"')
        db = await asyncpg.connect(services.with_database(applied.base_dsn, copied))
        try:
            yield Copy(db, applied.plan, copy.deepcopy(applied.seen))
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{copied}" WITH (FORCE)')
        await admin.close()


async def problems_of(run: Copy) -> list[str]:
    return await check_mixed(run.db, run.plan, run.seen)


def first(plan: MixedPlan, kind: str) -> mixed.Sent:
    return plan.of_kind(kind)[0]


async def test_the_right_run_passes_the_mixed_check(applied: Applied, run: Copy) -> None:
    assert applied.problems == []
    assert all(run.plan.counts[kind] for kind in KINDS)  # 100 messages: every kind sent

    assert await problems_of(run) == []


async def test_the_check_catches_a_tampered_balance(run: Copy) -> None:
    user = first(run.plan, SUBSCRIBE).user_id
    await run.db.execute(
        "UPDATE virtual_accounts SET balance_minor = balance_minor + 1 WHERE user_id = $1", user
    )

    problems = await problems_of(run)

    assert any("balances differ from initial" in p and user in p for p in problems), problems
    assert any("balances differ from their own transaction rows" in p for p in problems)
    assert any(p.startswith("total balance") for p in problems), problems


async def test_the_check_catches_a_missing_invoice(run: Copy) -> None:
    order = first(run.plan, ORDER)
    await run.db.execute("DELETE FROM invoices WHERE order_id = $1", order.key)
    run.seen.events.pop(order.key)  # nor was it announced

    problems = await problems_of(run)

    assert any("orders without an invoice" in p and order.key in p for p in problems), problems
    assert any("without exactly one invoice.created" in p for p in problems), problems


async def test_the_check_catches_duplicated_and_crossed_replies(run: Copy) -> None:
    balance, history = first(run.plan, BALANCE), first(run.plan, HISTORY)
    withdraw = first(run.plan, WITHDRAW)
    run.seen.replies[balance.key] += 1
    run.seen.replies[history.key] = 0
    run.seen.observed.replies[withdraw.key] += 1
    crossed = {"ok": True, "data": {"user_id": "someone-else", "accounts": []}}
    problem, _ = mixed.mixed_reply_problem(run.plan, balance, json.dumps(crossed).encode())
    run.seen.wrong_replies.append(f"{balance.key}: {problem}")
    run.seen.balances[balance.key] = -1

    problems = await problems_of(run)

    assert any("more than one reply" in p and balance.key in p for p in problems), problems
    assert any("withdraws got more than one reply" in p and withdraw.key in p for p in problems)
    assert any("requests got no reply" in p and history.key in p for p in problems), problems
    assert any("wrong replies" in p and "someone-else" in p for p in problems), problems
    assert any("balance replies outside" in p and balance.key in p for p in problems), problems


async def test_the_check_catches_a_deposit_completed_twice(run: Copy) -> None:
    deposit = first(run.plan, DEPOSIT)
    run.seen.events[deposit.key].add(str(uuid.uuid4()))  # a second, distinct event
    await run.db.execute(
        "UPDATE virtual_accounts SET balance_minor = balance_minor + $2 WHERE user_id = $1",
        deposit.user_id,
        deposit.amount_minor,
    )

    problems = await problems_of(run)

    assert any("without exactly one deposit.completed" in p and deposit.key in p
               for p in problems), problems  # fmt: skip
    assert any("balances differ from initial" in p and deposit.user_id in p for p in problems)


async def test_the_check_catches_a_subscription_unlike_its_create(run: Copy) -> None:
    sub = first(run.plan, SUBSCRIBE)
    await run.db.execute(
        "UPDATE subscriptions SET status = 'canceled' WHERE id = $1::uuid",
        run.plan.subscription_id(sub),
    )
    await run.db.execute(
        "DELETE FROM idempotency_records WHERE key = $1", first(run.plan, WITHDRAW).key
    )

    problems = await problems_of(run)

    assert any("subscriptions unlike their create" in p for p in problems), problems
    assert any("without their idempotency record" in p for p in problems), problems


async def test_the_check_wants_every_event_published_and_every_queue_empty(run: Copy) -> None:
    await run.db.execute(
        "UPDATE outbox SET published_at = NULL WHERE event_id = "
        "(SELECT event_id FROM outbox WHERE type = 'invoice.created' LIMIT 1)"
    )
    run.seen.observed.leftovers[names.DEAD_LETTER_QUEUE] = 1

    problems = await problems_of(run)

    assert any("were never published" in p for p in problems), problems
    assert any("queues still hold messages" in p and "dead-letter" in p for p in problems)


# --- no services --------------------------------------------------------------------------


def test_the_mix_is_parsed_and_checked() -> None:
    assert mixed.parse_mix("wallet.withdraw=3,wallet.balance=1") == {
        **dict.fromkeys(KINDS, 0), WITHDRAW: 3, BALANCE: 1
    }  # fmt: skip
    for wrong in ("wallet.withdraw=x", "nothing=1", "wallet.withdraw=0", "wallet.withdraw"):
        with pytest.raises(ValueError):  # noqa: PT011 - each says why
            mixed.parse_mix(wrong)
    assert mixed.checked_mix(None) == DEFAULT_MIX
    assert sum(DEFAULT_MIX.values()) == 100


def test_the_prefill_follows_the_kind_that_runs_out_first() -> None:
    last = {"ok": True, "mix": DEFAULT_MIX, "saturation": {"per_kind": {
        WITHDRAW: {"msgs_per_s": 40.0}, SUBSCRIBE: {"msgs_per_s": 20.0}}}}  # fmt: skip
    # subscriptions: 20 msgs/s of a 5 % share = a pre-fill consumed at 400 msgs/s
    assert mixed.messages_for("worker", 10, last) == int(400 * 10 * 1.2) + 200
    assert mixed.messages_for("worker", 10) == int(mixed.RATE_GUESS["worker"] * 12) + 200


def test_rss_figures_take_medians_and_one_sample_per_ten_seconds() -> None:
    samples = [(float(t), 100.0 + (t >= 300) * 10) for t in range(0, 400)]
    figures = rss.rss_figures(samples, 10.0, 399.0)

    assert figures["rss_mb_max"] == 110.0
    assert figures["rss_mb_at"][:3] == [[0.0, 100.0], [10.0, 100.0], [20.0, 100.0]]
    assert figures["rss_mb_at"][-1] == [389.0, 110.0]
    assert figures["rss_growth_mb_last_3_min"] == 10.0  # 100 at 219 s, 110 at the end
    assert figures["rss_growth_span_s"] == 180.0
