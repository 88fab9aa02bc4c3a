"""The worker's memory over a long drain (issue 18): does `billing-worker run` stay small
and flat?

One run in a fresh database and vhost, checked like a drain run (`check.check`):

1. seed the accounts (`Plan.seed`); pre-fill a backlog of withdraws + 10 % deposit
   completions (`--deposit-share`: sandbox callbacks of deposits seeded `processing`, as
   in the drain scenario), publisher confirms;
2. start the worker, sample `/proc/<pid>/status` VmRSS every second;
3. for `--minutes` from the first completion, keep the backlog topped up: whenever fewer
   than `LOW_WATER` messages are outstanding (sent, not completed), publish `BATCH`
   more (their deposits' `processing` rows inserted first), so the worker never idles
   and no rate has to be guessed;
4. stop topping up, let the backlog drain, the outbox settle, SIGTERM, leftovers, check.

Reported: `rss_mb_max` (every sample from start-up to the end of the drain),
`rss_mb_at` ([second, MB], seconds from the first completion, one per 10 s and the last),
`rss_growth_mb_last_3_min` (median of the last 5 samples minus the median of the 5
samples around 3 minutes before the end; a drain shorter than that compares with its
first seconds: `rss_growth_span_s` says over how long), the drain's msgs/s and CPU.

    .venv/bin/python -m benchmarks.rss --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmarks/rss.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika
import asyncpg

from benchmarks import env as services
from benchmarks.check import WORK_QUEUES, check
from benchmarks.load import Load, completions_in
from benchmarks.mixed import common_parser, options_of, run_id, settle_outbox, until, write_report
from benchmarks.plan import CURRENCY, Deposit, Plan
from benchmarks.procs import Consumer, CpuMeter, start_workers
from benchmarks.scenario import Options, fresh_run
from benchmarks.stats import window
from billing_contracts import names

LOW_WATER = 2000  # outstanding messages below which the backlog is topped up
BATCH = 500  # messages per top-up
SAMPLES = 5  # samples per median of the growth
GROWTH_SPAN_S = 180.0
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_PUBLISH_BATCH = 256

# A deposit Plan.seed would have seeded, for one planned after it. One row per statement
# (its own transaction): the foreign key's share lock on the account is then the only
# lock it waits for, holding none the worker could wait for, so it cannot deadlock with
# the worker's batches (a multi-row insert did).
INSERT_DEPOSIT = """
INSERT INTO transactions (id, user_id, account_id, kind, status, amount_minor, currency,
                          provider, provider_ref)
SELECT $1, $2, a.id, 'deposit', 'processing', $3, $5, 'sandbox', $4
FROM virtual_accounts AS a WHERE a.user_id = $2 AND a.currency = $5
"""


def rss_mb(pid: int) -> float | None:
    """VmRSS of a live process in MB (MiB); None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """VmRSS of one process every second, on this process's clock."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MB)
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def _run(self) -> None:
        start = time.perf_counter()
        tick = 0
        while (mb := rss_mb(self.pid)) is not None:
            self.samples.append((time.perf_counter(), round(mb, 1)))
            tick += 1
            await asyncio.sleep(max(0.0, start + tick - time.perf_counter()))

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Feeder:
    """Keeps a drain's backlog topped up: withdraws and deposit completions, confirmed."""

    def __init__(self, load: Load, plan: Plan, db: asyncpg.Connection, deposit_share: float):
        self.load, self.plan, self.db, self.share = load, plan, db, deposit_share

    def outstanding(self) -> int:
        return self.load.expected - len(self.load.done_at)

    async def publish(self, count: int, deposits: list[Deposit] | None = None) -> None:
        """`count` new messages (or the given deposits + withdraws up to `count`)."""
        plan, load = self.plan, self.load
        if deposits is None:
            deposits = [await plan.new_deposit() for _ in range(round(count * self.share))]
            for d in deposits:
                status = await self.db.execute(
                    INSERT_DEPOSIT, d.transaction_id, d.user_id, d.amount_minor,
                    d.provider_ref, CURRENCY,
                )  # fmt: skip
                if status != "INSERT 0 1":
                    raise RuntimeError(f"deposit {d.key} not seeded: {status}")
        outgoing: list[tuple[str, str, aio_pika.Message]] = [
            (names.PROVIDER_EVENTS_QUEUE, d.key, aio_pika.Message(
                d.body, content_type="application/json", delivery_mode=PERSISTENT,
                message_id=d.event_id, headers=plan.callback_headers(d)))  # type: ignore[arg-type]
            for d in deposits
        ]  # fmt: skip
        for _ in range(count - len(deposits)):
            w = plan.new_withdraw()
            outgoing.append((names.WALLET_WITHDRAW, w.key, aio_pika.Message(
                w.body(), content_type="application/json", delivery_mode=PERSISTENT,
                correlation_id=w.key, reply_to=load.reply_queue.name)))  # fmt: skip
        load.expected += len(outgoing)
        load.all_done.clear()
        exchange = load.confirmed.default_exchange
        for start in range(0, len(outgoing), _PUBLISH_BATCH):
            batch = outgoing[start : start + _PUBLISH_BATCH]
            now = time.perf_counter()
            for _, key, _ in batch:
                load.sent_at[key] = now
            await asyncio.gather(*(exchange.publish(m, routing_key=q) for q, _, m in batch))

    async def keep_up(self, until: float) -> None:
        """Top the backlog up whenever it falls below LOW_WATER, until `until`."""
        while time.perf_counter() < until:
            if self.outstanding() < LOW_WATER:
                await self.publish(BATCH)
            else:
                await asyncio.sleep(0.1)


def _median_near(samples: list[tuple[float, float]], at: float) -> float:
    """The median MB of the SAMPLES samples nearest `at`."""
    nearest = sorted(samples, key=lambda s: abs(s[0] - at))[:SAMPLES]
    return round(statistics.median(mb for _, mb in nearest), 1)


def rss_figures(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """The report's RSS figures from (time, MB) samples; the drain ran from start to end."""
    drain = [(t, mb) for t, mb in samples if start <= t <= end]
    if not drain:
        return {"rss_mb_max": None, "rss_mb_at": [], "rss_growth_mb_last_3_min": None}
    at: list[list[float]] = []
    for t, mb in drain:  # the first sample at or after each 10 s mark, and the last one
        if not at or t - start >= at[-1][0] + 10:
            at.append([float(int((t - start) // 10 * 10)), mb])
    if at[-1][0] != round(drain[-1][0] - start):
        at.append([round(drain[-1][0] - start, 1), drain[-1][1]])
    earlier = max(start, end - GROWTH_SPAN_S)
    last = [(t, mb) for t, mb in drain if t >= end - SAMPLES]
    return {
        "rss_mb_max": max(mb for t, mb in samples if t <= end),
        "rss_mb_start": _median_near(drain, start),
        "rss_mb_end": _median_near(last or drain, end),
        "rss_mb_at": at,
        "rss_growth_mb_last_3_min": round(
            _median_near(last or drain, end) - _median_near(drain, earlier), 1
        ),
        "rss_growth_span_s": round(end - earlier, 1),
        "rss_samples": len(drain),
    }


async def _drain(
    run_env: services.RunEnv, db: asyncpg.Connection, plan: Plan, minutes: float,
    o: Options, result: dict[str, Any],
) -> list[str]:  # fmt: skip
    load = Load(plan)
    await load.connect(run_env.amqp)
    feeding = await asyncpg.connect(run_env.dsn)
    problems: list[str] = []
    try:
        feeder = Feeder(load, plan, feeding, o.deposit_share)
        await feeder.publish(LOW_WATER + BATCH, list(plan.deposits.values()))  # seeded
        consumer: Consumer = await start_workers(run_env, 1, o.worker_settings, o.logs)
        sampler = Sampler(consumer.pids[0])
        try:
            await until(load.first_done.is_set, o.startup_timeout, consumer, "first completion")
            start = min(load.done_at.values())
            meter = CpuMeter(consumer, db)
            before = await meter.snapshot()
            feeding_task = asyncio.create_task(feeder.keep_up(start + minutes * 60))
            while not feeding_task.done():
                if consumer.died():
                    feeding_task.cancel()
                    raise RuntimeError("the worker died during the drain")
                await asyncio.sleep(0.5)
            await feeding_task
            end = time.perf_counter()
            result["cpu_s"] = meter.delta(before, await meter.snapshot())
            await sampler.stop()
            result.update(window(completions_in(load, start, end), start, end))
            done = result["completed_in_window"]
            cpu = result["cpu_s"]["consumer"]
            result["consumer_cpu_ms_per_msg"] = round(cpu * 1000 / done, 3) if done else None
            result.update(rss_figures(sampler.samples, start, end))
            await load.wait_all(o.tail_timeout)
            await settle_outbox(db, o.settle)
        except (TimeoutError, RuntimeError, asyncpg.PostgresError) as failure:
            problems.append(f"{type(failure).__name__}: {failure}")
        finally:
            await sampler.stop()
            problems += await consumer.stop()
        await load.count_leftovers(WORK_QUEUES)
        problems += await check(db, plan, load.observed, "worker")
        result.update(withdraws=len(plan.withdraws), deposits=len(plan.deposits))
    finally:
        await feeding.close()
        await load.close()
    return problems


async def run_rss(pair: int, name: str, options: Options, *, minutes: float) -> dict[str, Any]:
    """The worker's RSS over `minutes` of draining a topped-up backlog, then checked."""
    o = options
    result: dict[str, Any] = {
        "pair": pair, "scenario": "rss", "side": "worker", "database": name, "processes": 1,
        "minutes": minutes, "msgs_per_s": None, "p50_ms": None, "p99_ms": None,
        "latency": "queued (a backlog kept topped up)", "cpu_s": {},
        "consumer_cpu_ms_per_msg": None, "rss_mb_max": None, "rss_mb_at": [],
        "rss_growth_mb_last_3_min": None,
    }  # fmt: skip
    print(f"[pair {pair}] rss / worker: {name}", file=sys.stderr, flush=True)
    async with fresh_run(name, o, result) as (run_env, db, problems):
        plan = Plan(name, o.accounts, seed=pair)
        for _ in range(round((LOW_WATER + BATCH) * o.deposit_share)):
            await plan.new_deposit()  # seeded with the accounts (ANALYZE sees them)
        await plan.seed(db)
        problems += await _drain(run_env, db, plan, minutes, o, result)
    return result


async def _bench(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    await services.probe(args.dsn, args.amqp)
    options = options_of(args, logs, deposit_share=args.deposit_share)
    return await run_rss(1, f"bench_{run_id()}_rss", options, minutes=args.minutes)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("python -m benchmarks.rss", __doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of draining")
    parser.add_argument("--deposit-share", type=float, default=0.1,
                        help="share of the messages that are deposit completions")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="billing-rss-") as logs:
            result = asyncio.run(_bench(args, Path(logs)))
    except services.ServiceError as down:
        print(f"benchmarks.rss: {down}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.rss: interrupted", file=sys.stderr)
        return 130
    write_report(args.json, {"ok": result["ok"], "run": result, "config": vars(args)})
    if not result["ok"]:
        print("FAILED (a fast wrong run is a failed run):", *result["problems"], sep="\n  ",
              file=sys.stderr)  # fmt: skip
        return 1
    print(
        f"RSS max {result['rss_mb_max']} MB, growth over the last "
        f"{result['rss_growth_span_s']} s {result['rss_growth_mb_last_3_min']} MB; "
        f"{result['msgs_per_s']} msgs/s over {result['window_s']} s; check ok",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
