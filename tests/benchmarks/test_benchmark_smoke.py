"""The benchmark works end to end, and its correctness check catches a wrong run.

No timing is asserted: the machines are shared and noisy. The smoke run proves that every
scenario runs on both sides, is checked, and is reported; the checker tests prove that a
run which applied a command twice, lost a reply or moved a balance wrongly fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from benchmarks import env as services
from benchmarks import floor
from benchmarks.check import check
from benchmarks.load import Observed, reply_problem
from benchmarks.plan import Plan

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN_KEYS = {"pair", "scenario", "side", "processes", "msgs_per_s", "p50_ms", "p99_ms",
            "latency", "cpu_s", "consumer_cpu_ms_per_msg", "ok", "problems"}  # fmt: skip
SIDE_KEYS = {"msgs_per_s", "p50_ms", "p99_ms", "cpu_s", "processes", "runs"}


def rabbitmq_base() -> str:
    base = os.environ.get("BILLING_TEST_RABBITMQ_URL", services.DEFAULT_AMQP)
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("the benchmark needs rabbitmqctl to create its vhosts")
    return base


def test_smoke_run_reports_every_scenario_and_passes_its_checks(
    postgres_server: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(  # noqa: S603 - our own benchmark
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--json", str(report_path),
         "--dsn", postgres_server, "--amqp", rabbitmq_base()],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,  # a hang guard
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert {"ok", "config", "host", "runs", "summary", "failures"} <= set(report)
    assert report["ok"] is True
    assert report["failures"] == []
    assert report["config"]["smoke"] is True
    for run in report["runs"]:
        assert set(run) >= RUN_KEYS, run
        assert run["ok"], run["problems"]
        assert {"consumer", "postgres", "rabbitmq", "loadgen"} <= set(run["cpu_s"])
    summary = report["summary"]
    assert set(summary) == {"drain", "hot", "rpc-c1", "rpc-c64", "workers2"}
    for scenario in ("drain", "hot", "rpc-c1", "rpc-c64"):
        assert set(summary[scenario]["floor"]) >= SIDE_KEYS
        assert set(summary[scenario]["worker"]) >= SIDE_KEYS
        assert {"median", "min", "max", "pairs"} <= set(
            summary[scenario]["ratio_worker_over_floor"]
        )
    assert summary["workers2"]["worker"]["processes"] == 2
    assert "ratio_over_1_process" in summary["workers2"]
    assert "worker/floor msgs/s, drain: median" in result.stdout


@pytest.fixture
async def db(postgres_server: str) -> AsyncIterator[asyncpg.Connection]:
    """A fresh database migrated with `billing-worker migrate`, like a benchmark run's."""
    run_env = services.run_env(
        postgres_server, services.DEFAULT_AMQP, f"bench_check_{uuid.uuid4().hex[:12]}"
    )
    await services.migrate(run_env)
    connection = await asyncpg.connect(run_env.dsn)
    try:
        yield connection
    finally:
        await connection.close()
        await services.drop_database(run_env, postgres_server)


async def apply_correctly(db: asyncpg.Connection) -> tuple[Plan, Observed]:
    """Apply a small plan through the floor's own SQL, as a right run would."""
    plan = Plan("check", accounts=20)
    deposits = [await plan.new_deposit() for _ in range(3)]
    await plan.seed(db)
    observed = Observed()
    for _ in range(10):
        command = plan.new_withdraw()
        reply, _ = await floor.withdraw(db, command.body())
        observed.replies[command.key] += 1
        if (problem := reply_problem(command, reply)) is not None:
            observed.wrong_replies.append(problem)
    for deposit in deposits:
        assert await floor.complete_deposit(db, deposit.body) is not None
        observed.deposit_events[deposit.key] += 1
    return plan, observed


async def test_the_check_passes_a_right_run_even_with_redeliveries(
    db: asyncpg.Connection,
) -> None:
    plan, observed = await apply_correctly(db)
    command = next(iter(plan.withdraws.values()))
    deposit = next(iter(plan.deposits.values()))
    # Redelivered: the first reply again, no second effect.
    reply, event = await floor.withdraw(db, command.body())
    assert event is None
    assert reply_problem(command, reply) is None
    assert await floor.complete_deposit(db, deposit.body) is None

    assert await check(db, plan, observed, "floor") == []


async def test_the_check_catches_a_command_applied_twice(db: asyncpg.Connection) -> None:
    plan, observed = await apply_correctly(db)
    command = next(iter(plan.withdraws.values()))
    # What a lost idempotency guard does: a second debit and a second transaction row.
    await db.execute(
        "UPDATE virtual_accounts SET balance_minor = balance_minor - $2 WHERE user_id = $1",
        command.user_id,
        command.amount_minor,
    )
    await db.execute(
        "INSERT INTO transactions (id, user_id, kind, status, amount_minor, currency, provider, "
        "reference, completed_at) "
        "VALUES ($1, $2, 'withdrawal', 'completed', $3, 'USD', 'balance', $4, now())",
        uuid.uuid4(),
        command.user_id,
        command.amount_minor,
        command.key,
    )

    problems = await check(db, plan, observed, "floor")

    assert any("applied more than once" in p and command.key in p for p in problems), problems
    assert any("balances differ from initial" in p for p in problems), problems


async def test_the_check_catches_a_tampered_balance(db: asyncpg.Connection) -> None:
    plan, observed = await apply_correctly(db)
    await db.execute(
        "UPDATE virtual_accounts SET balance_minor = balance_minor + 1 WHERE user_id = $1",
        plan.user(7),
    )

    problems = await check(db, plan, observed, "floor")

    assert any("balances differ from initial" in p and plan.user(7) in p for p in problems)
    assert any("balances differ from their own transaction rows" in p for p in problems)
    assert any(p.startswith("total balance") for p in problems), problems


async def test_the_check_catches_lost_duplicated_and_crossed_replies(
    db: asyncpg.Connection,
) -> None:
    plan, observed = await apply_correctly(db)
    first, second, third = list(plan.withdraws.values())[:3]
    observed.replies[first.key] = 0
    observed.replies[second.key] = 2
    crossed = floor.dumps({"ok": True, "data": {"transaction": {
        "user_id": "someone-else", "amount": {"amount": "1.00", "currency": "USD"}}}})  # fmt: skip
    observed.wrong_replies.append(f"{third.key}: {reply_problem(third, crossed.encode())}")
    observed.unknown_replies = 1

    problems = await check(db, plan, observed, "floor")

    assert any("got no reply" in p and first.key in p for p in problems), problems
    assert any("more than one reply" in p and second.key in p for p in problems), problems
    assert any("wrong replies" in p and "someone-else" in p for p in problems), problems
    assert any("never sent" in p for p in problems), problems


async def test_the_check_wants_every_worker_outbox_row_published(db: asyncpg.Connection) -> None:
    plan, observed = await apply_correctly(db)  # the floor leaves published_at empty

    problems = await check(db, plan, observed, "worker")

    assert any("were never published" in p for p in problems), problems
