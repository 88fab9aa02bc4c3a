"""One run: one scenario on one side, in its own fresh database and vhost, then checked.

create db + vhost -> seed accounts (and processing deposits) -> declare, pre-fill
-> start the consumer -> measure -> wait for the tail -> (worker) let the outbox settle
-> stop the consumer -> count what is left in the queues -> check -> drop db + vhost
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import env as services
from benchmarks import profile
from benchmarks.check import WORK_QUEUES, check
from benchmarks.load import Load, completions_in
from benchmarks.plan import Plan
from benchmarks.procs import Consumer, CpuMeter, start_batched_floor, start_floor, start_workers
from benchmarks.stats import window
from billing_contracts import names


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    rpc_concurrency: int = 0  # 0: pre-filled queue drained; n: closed loop of n clients
    hot: bool = False  # every withdraw on one account
    deposits: bool = True  # deposit completions mixed in (pre-filled only)
    processes: int = 1  # worker processes
    sides: tuple[str, ...] = ("floor", "batched", "worker")  # run in this order
    rate_guess: float = 900.0  # msgs/s to size the first pre-fill (the floor's rate, measured)


@dataclass
class Options:
    dsn: str
    amqp: str
    logs: Path
    seconds: float = 15.0
    warmup: float = 1.0
    accounts: int = 10_000
    deposit_share: float = 0.1
    floor_prefetch: int = 16
    floor_pool: int = 16
    batch_size: int = 64
    batched_prefetch: int = 256
    worker_settings: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 60.0
    tail_timeout: float = 120.0
    settle: float = 10.0
    keep_failed: bool = False
    profile: bool = False  # py-spy the worker's window (benchmarks/profile.py)
    template: str | None = None  # a scaled template the run's database is copied from
    # A migrated, empty database every run's own is copied from (made once per
    # invocation by benchmarks.run); None: each run migrates its own.
    schema: str | None = None


async def _wait(event: asyncio.Event, patience: float, consumer: Consumer, what: str) -> None:
    """Wait for `event`, failing at once if the consumer died meanwhile."""
    deadline = time.perf_counter() + patience
    while not event.is_set():
        if consumer.died():  # stop() says how
            raise RuntimeError(f"the {consumer.side} died before its {what}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no {what} within {patience:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 0.2)


async def _measure_drain(
    load: Load, consumer: Consumer, meter: CpuMeter, o: Options
) -> dict[str, Any]:
    """From the first completion + warm-up, for `seconds` or until the queue is empty."""
    await _wait(load.first_done, o.startup_timeout, consumer, "first completion")
    start = min(load.done_at.values()) + o.warmup
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), start - time.perf_counter())
    before = await meter.snapshot()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.all_done.wait(), start + o.seconds - time.perf_counter())
    early = load.all_done.is_set()
    end = max(load.done_at.values()) if early else start + o.seconds
    cpu = meter.delta(before, await meter.snapshot())
    return {**window(completions_in(load, start, end), start, end), "drained_early": early,
            "latency": "queued (pre-filled)", "cpu_s": cpu}  # fmt: skip


async def _measure_rpc(load: Load, concurrency: int, meter: CpuMeter, o: Options) -> dict[str, Any]:
    """A closed loop for warm-up + `seconds`; only the last `seconds` are measured."""
    await load.call(o.startup_timeout)  # the consumer is up and answering
    start = time.perf_counter() + o.warmup
    end = start + o.seconds
    clients = asyncio.create_task(load.closed_loop(concurrency, end, o.startup_timeout))
    await asyncio.wait({clients}, timeout=o.warmup)
    before = await meter.snapshot()
    await asyncio.wait({clients}, timeout=end - time.perf_counter())
    cpu = meter.delta(before, await meter.snapshot())
    await clients  # the requests in flight at the end finish (and are checked) too
    return {**window(completions_in(load, start, end), start, end), "drained_early": False,
            "latency": "round trip", "cpu_s": cpu}  # fmt: skip


async def _settle_outbox(db: asyncpg.Connection, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if not await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            return
        await asyncio.sleep(0.1)


async def _start(side: str, scenario: Scenario, run_env: services.RunEnv, o: Options) -> Consumer:
    queues = [names.WALLET_WITHDRAW, names.PROVIDER_EVENTS_QUEUE]
    if side == "floor":
        return await start_floor(run_env, queues, o.floor_prefetch, o.floor_pool, o.logs)
    if side == "batched":
        return await start_batched_floor(run_env, queues, o.batched_prefetch, o.batch_size, o.logs)
    return await start_workers(run_env, scenario.processes, o.worker_settings, o.logs)


async def _drive(
    scenario: Scenario, side: str, run_env: services.RunEnv, db: asyncpg.Connection,
    load: Load, o: Options, result: dict[str, Any],
) -> list[str]:  # fmt: skip
    consumer = await _start(side, scenario, run_env, o)
    problems: list[str] = []
    profiling = None
    if o.profile and side == "worker":
        profiling = asyncio.create_task(_profile(load, consumer, run_env, o))
    try:
        meter = CpuMeter(consumer, db)
        if scenario.rpc_concurrency:
            measured = await _measure_rpc(load, scenario.rpc_concurrency, meter, o)
        else:
            measured = await _measure_drain(load, consumer, meter, o)
        result.update(measured)
        cpu = measured["cpu_s"]["consumer"]
        done = measured["completed_in_window"]
        result["consumer_cpu_ms_per_msg"] = round(cpu * 1000 / done, 3) if done else None
        await load.wait_all(o.tail_timeout)
        if side == "worker":
            await _settle_outbox(db, o.settle)
        if profiling is not None:
            result["profile"] = await profiling
    except (TimeoutError, RuntimeError) as failure:
        problems.append(str(failure))
    finally:
        if profiling is not None and not profiling.done():
            profiling.cancel()
        problems += await consumer.stop()
    return problems


async def _profile(
    load: Load, consumer: Consumer, run_env: services.RunEnv, o: Options
) -> dict[str, Any]:
    """py-spy on the (first) worker process over the window: from the first completion
    + warm-up (or, closed-loop, from the start + warm-up) for `seconds`."""
    await load.first_done.wait()
    await asyncio.sleep(o.warmup)
    out = o.logs / f"{run_env.name}-profile.txt"
    return await profile.record(consumer.pids[0], o.seconds, out)


@contextlib.asynccontextmanager
async def fresh_run(
    name: str, o: Options, result: dict[str, Any], *, template: str | None = None
) -> AsyncIterator[tuple[services.RunEnv, asyncpg.Connection, list[str]]]:
    """One run's own database (`billing-worker migrate`, or a copy of `template` or of
    the invocation's migrated `o.schema`) and vhost, a connection to the database, and
    the run's list of problems. At the end the result says `ok` and lists the problems;
    the database and vhost are dropped, or kept for a look when the run failed and
    `--keep-failed` asks for it."""
    run_env = services.run_env(o.dsn, o.amqp, name)
    problems: list[str] = []
    try:
        await services.create(run_env, o.amqp, template=template, schema=o.schema)
        db = await asyncpg.connect(run_env.dsn)
        try:
            yield run_env, db, problems
        finally:
            await db.close()
    finally:
        result.update(ok=not problems, problems=problems)
        if problems and o.keep_failed:
            print(f"  kept {run_env.dsn} and vhost {run_env.vhost}", file=sys.stderr)
        else:
            await services.destroy(run_env, o.dsn, o.amqp)


async def run_once(
    scenario: Scenario, side: str, pair: int, name: str, messages: int, o: Options
) -> dict[str, Any]:
    """Run, measure and check; the result says `ok` and lists any problem found."""
    result: dict[str, Any] = {
        "pair": pair, "scenario": scenario.name, "side": side, "database": name,
        "processes": scenario.processes if side == "worker" else 1,
        "rpc_concurrency": scenario.rpc_concurrency or None, "hot_account": scenario.hot,
    }  # fmt: skip
    print(f"[pair {pair}] {scenario.name} / {side}: {name}", file=sys.stderr, flush=True)
    async with fresh_run(name, o, result, template=o.template) as (run_env, db, problems):
        since = await db.fetchval("SELECT clock_timestamp()") if o.template else None
        plan = Plan(name, o.accounts, hot=scenario.hot, seed=pair)
        prefill = 0 if scenario.rpc_concurrency else messages
        deposits = round(prefill * o.deposit_share) if scenario.deposits else 0
        for _ in range(deposits):
            await plan.new_deposit()
        await plan.seed(db)
        load = Load(plan)
        await load.connect(run_env.amqp)
        try:
            await load.prefill(prefill - deposits)
            problems += await _drive(scenario, side, run_env, db, load, o, result)
            await load.count_leftovers(WORK_QUEUES)
            problems += await check(db, plan, load.observed, side, since)
        finally:
            await load.close()
        result.update(withdraws=len(plan.withdraws), deposits=len(plan.deposits))
    return result
