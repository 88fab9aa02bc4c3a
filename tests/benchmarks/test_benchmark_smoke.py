"""The benchmark works end to end, and its correctness check catches a wrong run.

No timing is asserted: the machines are shared and noisy. The smoke run proves that every
scenario runs on each of its sides (floor, batched floor, worker), is checked, and is
reported with its targets; the checker tests prove that a run which applied a command
twice, lost a reply or moved a balance wrongly fails; the batched floor's tests prove it
applies a batch as the floor would, and that a redelivery gets its stored reply and
changes nothing.
"""

from __future__ import annotations

import asyncio
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

from benchmarks import batched_floor, floor, targets
from benchmarks import env as services
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
        sides = [run["side"] for run in report["runs"] if run["scenario"] == scenario]
        assert sides == ["floor", "batched", "worker"], sides  # interleaved, in this order
        for side in ("floor", "batched", "worker"):
            assert set(summary[scenario][side]) >= SIDE_KEYS, (scenario, side)
        for ratio in ("ratio_worker_over_floor", "ratio_worker_over_batched"):
            assert {"median", "min", "max", "pairs"} <= set(summary[scenario][ratio])
    assert summary["workers2"]["worker"]["processes"] == 2
    assert "ratio_over_1_process" in summary["workers2"]
    assert "batched" not in summary["workers2"]
    assert "worker/floor msgs/s, drain: median" in result.stdout
    assert "worker / batched floor msgs/s, drain: median" in result.stdout

    evaluated = {target["name"]: target for target in report["targets"]}
    assert list(evaluated) == [target.name for target in targets.TARGETS]
    for target in evaluated.values():
        assert set(target) >= {"name", "target", "measured", "status"}, target
        assert target["status"] in {targets.MET, targets.NOT_MET, targets.NOT_MEASURED}
    for name in ("drain vs batched floor", "drain vs floor", "hot vs batched floor",
                 "rpc-c1 p50", "rpc-c64 msgs/s", "rpc-c64 p99"):  # fmt: skip
        assert evaluated[name]["status"] != targets.NOT_MEASURED, evaluated[name]
    assert "| measured" in result.stdout  # the targets' table
    assert "not measured" in result.stdout  # rss and scale are not smoke scenarios
    # Every run's database, and the migrated one they were copied from, is dropped.
    prefix = report["runs"][0]["database"].rsplit("_", 1)[0] + "_"
    assert asyncio.run(databases_named(postgres_server, prefix)) == []


async def databases_named(dsn: str, prefix: str) -> list[str]:
    connection = await asyncpg.connect(services.asyncpg_dsn(dsn))
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix
        )
    finally:
        await connection.close()
    return [row["datname"] for row in rows]


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


SNAPSHOT = {
    "accounts": "SELECT coalesce(sum(balance_minor), 0) FROM virtual_accounts",
    "transactions": "SELECT count(*) FROM transactions WHERE status = 'completed'",
    "transitions": "SELECT count(*) FROM transaction_transitions",
    "outbox": "SELECT count(*) FROM outbox",
    "idempotency": "SELECT count(*) FROM idempotency_records",
}


async def snapshot(db: asyncpg.Connection) -> dict[str, object]:
    """Every balance and the rows of each table a command writes."""
    state: dict[str, object] = {name: await db.fetchval(sql) for name, sql in SNAPSHOT.items()}
    state["balances"] = {row["user_id"]: row["balance_minor"] for row in await db.fetch(
        "SELECT user_id, balance_minor FROM virtual_accounts")}  # fmt: skip
    return state


def balance_of(body: bytes, *path: str) -> int:
    """The balance a reply or an event carries, in minor units."""
    node = json.loads(body)
    for key in path:
        node = node[key]
    return floor.minor_of(node["balance"]["amount"])


async def apply_batched(db: asyncpg.Connection) -> tuple[Plan, Observed, list[bytes]]:
    """One batch of withdraws and one of deposits through the batched floor, on 3 accounts
    (so a batch debits one account several times); returns the replies in order."""
    plan = Plan("batched", accounts=3)
    deposits = [await plan.new_deposit() for _ in range(4)]
    await plan.seed(db)
    commands = [plan.new_withdraw() for _ in range(12)]
    outcomes = await batched_floor.withdraw_batch(db, [c.body() for c in commands])
    observed = Observed()
    expected = dict.fromkeys((plan.user(i) for i in range(3)), plan.initial_balance)
    replies = []
    for command, outcome in zip(commands, outcomes, strict=True):
        assert outcome.reply is not None, outcome
        assert outcome.event is not None, outcome
        assert reply_problem(command, outcome.reply) is None, outcome.reply
        expected[command.user_id] -= command.amount_minor  # each reply: its running balance
        assert balance_of(outcome.reply, "data") == expected[command.user_id]
        assert balance_of(outcome.event[2], "data") == expected[command.user_id]
        observed.replies[command.key] += 1
        replies.append(outcome.reply)
    completed = await batched_floor.deposit_batch(db, [d.body for d in deposits])
    for deposit, outcome in zip(deposits, completed, strict=True):
        assert outcome.event is not None, outcome
        assert outcome.reply is None, outcome
        expected[deposit.user_id] += deposit.amount_minor
        assert balance_of(outcome.event[2], "data") == expected[deposit.user_id]
        observed.deposit_events[deposit.key] += 1
    return plan, observed, replies


async def test_the_batched_floor_applies_a_batch_as_the_floor_would(
    db: asyncpg.Connection,
) -> None:
    plan, observed, _ = await apply_batched(db)

    assert await check(db, plan, observed, "batched") == []
    trail = await db.fetch(
        "SELECT t.kind, s.from_status, s.to_status FROM transaction_transitions AS s "
        "JOIN transactions AS t ON t.id = s.transaction_id"
    )
    assert sorted((row["kind"], row["from_status"], row["to_status"]) for row in trail) == [
        *[("deposit", "processing", "completed")] * len(plan.deposits),
        *[("withdrawal", None, "completed")] * len(plan.withdraws),
    ]


async def test_a_batch_redelivered_to_the_batched_floor_gets_its_stored_replies_and_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    plan, observed, replies = await apply_batched(db)
    commands = list(plan.withdraws.values())
    before = await snapshot(db)

    again = await batched_floor.withdraw_batch(db, [c.body() for c in commands[:5]])
    redone = await batched_floor.deposit_batch(db, [d.body for d in plan.deposits.values()])

    # the stored reply comes back through jsonb: the same JSON, not the same bytes
    assert [json.loads(outcome.reply or "null") for outcome in again] == [
        json.loads(reply) for reply in replies[:5]
    ]
    assert all(outcome.event is None and not outcome.failed for outcome in again)
    assert all(outcome.event is None and not outcome.failed for outcome in redone)
    assert await snapshot(db) == before

    # A redelivery in the same batch as a new command: the new one is applied all the same.
    fresh = plan.new_withdraw()
    mixed = await batched_floor.withdraw_batch(db, [commands[7].body(), fresh.body()])
    assert json.loads(mixed[0].reply or "null") == json.loads(replies[7])
    assert mixed[0].event is None
    assert mixed[1].reply is not None
    assert mixed[1].event is not None
    assert reply_problem(fresh, mixed[1].reply) is None
    observed.replies[fresh.key] += 1
    assert await check(db, plan, observed, "batched") == []


async def test_an_account_short_of_funds_is_refused_alone_by_the_batched_floor(
    db: asyncpg.Connection,
) -> None:
    plan = Plan("short", accounts=4)
    await plan.seed(db)
    await db.execute(
        "UPDATE virtual_accounts SET balance_minor = 0 WHERE user_id = $1", plan.user(0)
    )
    commands = [plan.new_withdraw() for _ in range(10)]

    outcomes = await batched_floor.withdraw_batch(db, [c.body() for c in commands])

    for command, outcome in zip(commands, outcomes, strict=True):
        assert outcome.reply is not None
        if command.user_id == plan.user(0):
            assert json.loads(outcome.reply)["error"]["code"] == "insufficient_funds"
            assert outcome.event is None
        else:
            assert reply_problem(command, outcome.reply) is None
    refused = sum(c.user_id == plan.user(0) for c in commands)
    assert 0 < refused < len(commands)  # the seed puts some, not all, on the empty account
    assert (
        await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1", plan.user(0)
        )
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM transactions") == len(commands) - refused
