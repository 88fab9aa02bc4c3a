"""The benchmark: the real worker against two floors, in one run, on local services.

    .venv/bin/python -m benchmarks.run                # 3 pairs, 15 s per run, every scenario
    .venv/bin/python -m benchmarks.run --smoke        # 1 pair, ~2 s per run (the test suite)

Scenarios, each run as floor, batched, worker, floor, batched, worker ... over --pairs
(the three sides of a pair share one random seed), every run in a fresh database
(a copy of one the invocation migrates with `billing-worker migrate`) and a fresh vhost,
every run checked:

    drain      pre-filled withdraws across the accounts + sandbox deposit completions
    hot        pre-filled withdraws, all on one account
    rpc-c<n>   closed-loop request/reply with n clients (--rpc-concurrency)
    workers<n> drain with n `billing-worker run` processes (worker only, vs 1 process)

The sides (see benchmarks/README.md): `floor` is `python -m benchmarks.floor`, the
per-message floor (aio-pika + asyncpg, one transaction, two confirmed publishes and one
ack per message); `batched` is `python -m benchmarks.batched_floor`, the batched floor
(a batch per transaction, its confirms awaited together, one multiple ack); `worker` is
`billing-worker run` with its real settings (log level WARNING).

Prints the medians over the pairs (msgs/s, p50/p99 ms, CPU seconds per process), the
median worker/floor and worker/batched-floor ratios with their min-max, then the targets
of issue 18 (benchmarks/targets.py: met, not met or not measured); writes the same and
every run as JSON. Exit code 0 when every run passed its correctness check, whatever
the targets say (a missed target does not change it); 1 when a run failed its check
(stops at the first, the message says what is wrong: a fast wrong run is a failed run);
2 when a service is unreachable. Needs RabbitMQ's management API (port 15672) or
rabbitmqctl, and a PostgreSQL user allowed to create databases.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import env as services
from benchmarks import profile, targets
from benchmarks.scenario import Options, Scenario, run_once
from benchmarks.stats import SPECIAL, special_summary, special_table, summarize, table

RESULTS = Path(__file__).resolve().parent / "results"
ALL_SCENARIOS = ("drain", "hot", "rpc", "workers", "mixed", "rss")
# The smoke run's default: the long and separately tested ones (mixed, rss) are left out.
SMOKE_SCENARIOS = ("drain", "hot", "rpc", "workers")
SCALED = "@scale"  # the suffix of a scenario run on the scaled database
BATCHED_GUESS = 2.5  # the batched floor's first pre-fill: this many times the floor's rate


def scenarios(names: list[str], concurrencies: list[int], processes: int) -> list[Scenario]:
    chosen: list[Scenario] = []
    for name in names:
        if name == "drain":
            chosen.append(Scenario("drain"))
        elif name == "hot":
            chosen.append(Scenario("hot", hot=True, deposits=False, rate_guess=600.0))
        elif name == "rpc":
            chosen += [Scenario(f"rpc-c{n}", rpc_concurrency=n, deposits=False)
                       for n in concurrencies]  # fmt: skip
        elif name == "workers":
            chosen.append(Scenario(f"workers{processes}", processes=processes, sides=("worker",)))
    return chosen


def sized(rate: float, seconds: float) -> int:
    """Enough messages to keep the consumer busy for the window, with a short tail."""
    return max(200, int(rate * seconds * 1.1) + 100)


def _csv(kind: type, choices: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if not values or (choices and any(v not in choices for v in values)):
            expected = ",".join(choices) if choices else kind.__name__
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {expected}")
        return values

    return parse


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("BILLING_"):
        raise argparse.ArgumentTypeError("expected BILLING_NAME=value")
    return key, value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, the module docstring as written."""


# flag, type (bool: a switch), default, help
OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("--dsn", str, services.DEFAULT_DSN, "PostgreSQL server (any database on it); the run "
     "migrates bench_<run>_schema there with `billing-worker migrate`, each run copies it "
     "to bench_<run>_<n>; all are dropped"),
    ("--amqp", str, services.DEFAULT_AMQP,
     "RabbitMQ; each run adds and deletes a vhost of its own (management API or rabbitmqctl)"),
    ("--pairs", int, 3, "floor/batched/worker sets per scenario, interleaved (>= 3 for a "
     "spread; the targets want medians over >= 3)"),
    ("--seconds", float, 15.0, "measured window of each run"),
    ("--warmup", float, 1.0,
     "seconds of each run before the window opens (pools filling, caches warming)"),
    ("--messages", int, None, "messages pre-filled per run (default: ~1.1 x (warmup + "
     "seconds) x the last rate measured for that scenario and side: the queue outlasts "
     "the window)"),
    ("--accounts", int, 10_000, "pre-funded accounts (one per user)"),
    ("--deposit-share", float, 0.1,
     "share of the drain scenarios' messages that are sandbox deposit completions"),
    ("--scenarios", _csv(str, ALL_SCENARIOS), list(ALL_SCENARIOS),
     f"comma-separated subset of {','.join(ALL_SCENARIOS)}"),
    ("--rpc-concurrency", _csv(int), [1, 64],
     "closed-loop clients of the rpc scenarios, comma-separated: one scenario each"),
    ("--rss-minutes", float, 5.0, "minutes of the rss scenario's drain (one run, pair 1)"),
    ("--worker-processes", int, 2, "worker processes of the workers scenario"),
    ("--floor-prefetch", int, 16, "the floor's prefetch per queue"),
    ("--floor-pool", int, 16, "the floor's PostgreSQL connections"),
    ("--batch-size", int, 64, "the batched floor's most messages per database transaction"),
    ("--batched-prefetch", int, 256, "the batched floor's prefetch per queue"),
    ("--startup-timeout", float, 60.0,
     "seconds a consumer may take to its first reply; also the reply timeout of rpc"),
    ("--tail-timeout", float, 120.0,
     "seconds to finish the messages left after the window (all must complete)"),
    ("--settle", float, 10.0,
     "seconds the worker's outbox may take to publish everything after the last reply"),
    ("--json", Path, None,
     "where to write the JSON report (default benchmarks/results/<UTC timestamp>.json)"),
    ("--profile", bool, False,
     "record the worker with py-spy over each worker run's window and print where its "
     "CPU goes, by package (benchmarks/profile.py; needs ptrace rights)"),
    ("--scale", bool, False,
     "also run drain and the first rpc scenario (worker) on a copy of a scaled database "
     "(benchmarks/scale.py: built once, then reused) against the same on an empty one, "
     "and probe the hot queries there (p99, EXPLAIN)"),
    ("--scale-accounts", int, 1_000_000, "accounts of the scaled database"),
    ("--scale-transactions", int, 10_000_000,
     "transactions of the scaled database (each with its audit row and idempotency record)"),
    ("--keep-failed", bool, False,
     "keep the database and vhost of a run that failed its check, for inspection"),
    ("--smoke", bool, False, "1 pair, 2 s per run, no warm-up, 300 messages: proves that "
     "everything works end to end (the test suite); its figures mean nothing"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=_Formatter,
    )
    for flag, kind, default, text in OPTIONS:
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument(
        "--worker-setting", type=_setting, action="append", default=[], metavar="BILLING_X=V",
        help="extra worker setting, repeatable (e.g. BILLING_PREFETCH=16); otherwise the "
        "worker runs with its defaults and BILLING_LOG_LEVEL=WARNING",
    )  # fmt: skip
    return parser


def options_from(args: argparse.Namespace, logs: Path) -> Options:
    """The scenario options of the same name as the command-line options."""
    names = {f.name for f in dataclasses.fields(Options)} - {"logs", "worker_settings",
                                                              "template", "schema"}  # fmt: skip
    return Options(
        logs=logs,
        worker_settings=dict(args.worker_setting),
        **{name: getattr(args, name) for name in names},
    )


def _line(result: dict[str, Any]) -> str:
    if not result["ok"]:
        first, more = result["problems"][0], len(result["problems"]) - 1
        return f"  FAILED: {first}" + (f" (+{more} more problems, listed below)" if more else "")
    if result["scenario"] == "rss":
        growth = result["rss_growth_mb_last_3_min"]
        return (f"  {result['msgs_per_s']} msgs/s, RSS max {result['rss_mb_max']} MB, growth "
                f"{growth} MB over the last 3 minutes: check ok")  # fmt: skip
    if result["scenario"] == "mixed":
        queries = result.get("query_p99_ms") or {}
        worst = max(queries.values(), default=None)
        return (f"  {result['msgs_per_s']} msgs/s, withdraws {result['withdraw_msgs_per_s']} "
                f"msgs/s" + (f", worst query p99 {worst} ms" if worst is not None else "")
                + ": check ok")  # fmt: skip
    return (
        f"  {result['msgs_per_s']} msgs/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"consumer CPU {result['cpu_s']['consumer']} s, "
        f"{result['withdraws']} withdraws + {result['deposits']} deposits: check ok"
    )


async def special(
    name: str, pair: int, database: str, args: argparse.Namespace, options: Options,
    last: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """The mixed scenario (floor, then worker) or the rss run of one pair."""
    from benchmarks import mixed, rss

    if name == "rss":
        return [await rss.run_rss(pair, f"{database}_r", options, minutes=args.rss_minutes)]
    runs = []
    for side in ("floor", "worker"):
        messages = args.messages or mixed.messages_for(
            side, args.warmup + args.seconds, last.get(side)
        )
        run = await mixed.run_mixed(side, pair, f"{database}_{side[0]}", options,
                                    messages=messages)  # fmt: skip
        last[side] = run
        runs.append(run)
        if not run["ok"]:
            break
    return runs


async def benchmark(args: argparse.Namespace, run_id: str, logs: Path) -> list[dict[str, Any]]:
    """Every run of the invocation, each on a copy of one database migrated here."""
    schema = services.run_env(args.dsn, args.amqp, f"bench_{run_id}_schema")
    await services.migrate(schema)
    try:
        options = dataclasses.replace(options_from(args, logs), schema=schema.database)
        return await _benchmark(args, options, run_id)
    finally:
        await services.drop_database(schema, args.dsn)


async def _benchmark(
    args: argparse.Namespace, options: Options, run_id: str
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rates: dict[tuple[str, str], float] = {}
    last_mixed: dict[str, dict[str, Any]] = {}
    template = None
    if args.scale:
        from benchmarks import scale

        template = await scale.ensure_template(
            args.dsn, accounts=args.scale_accounts, transactions=args.scale_transactions
        )
    for pair in range(1, args.pairs + 1):
        for name in [n for n in args.scenarios if n in ("mixed", "rss")]:
            if name == "rss" and pair > 1:  # one long run says what it has to say
                continue
            for result in await special(name, pair, f"bench_{run_id}_{len(results) + 1}",
                                        args, options, last_mixed):  # fmt: skip
                results.append(result)
                print(_line(result), file=sys.stderr, flush=True)
                if not result["ok"]:
                    return results
        for scenario in scenarios(args.scenarios, args.rpc_concurrency, args.worker_processes):
            for side in scenario.sides:
                guess = (
                    rates.get((scenario.name, side))
                    or rates.get((scenario.name, "floor"), 0.0)
                    * (BATCHED_GUESS if side == "batched" else 1.0)
                    or rates.get(("drain", "worker"), 0.0) * scenario.processes
                )
                messages = args.messages or sized(
                    guess or scenario.rate_guess, args.warmup + args.seconds
                )
                name = f"bench_{run_id}_{len(results) + 1}"
                result = await run_once(scenario, side, pair, name, messages, options)
                results.append(result)
                print(_line(result), file=sys.stderr, flush=True)
                if not result["ok"]:
                    return results  # a fast wrong run is a failed run: stop here
                rates[(scenario.name, side)] = result["msgs_per_s"]
        if template is not None:
            scaled = await scaled_runs(args, options, template, pair, run_id, len(results), rates)
            results += scaled
            if not all(r["ok"] for r in scaled):
                return results
    if template is not None:
        results.append(await scaled_probe(args, template, run_id))
    return results


def scaled_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """drain and the first rpc scenario, worker side, on the scaled database."""
    return [
        Scenario(f"drain{SCALED}", sides=("worker",)),
        Scenario(f"rpc-c{args.rpc_concurrency[0]}{SCALED}",
                 rpc_concurrency=args.rpc_concurrency[0], deposits=False, sides=("worker",)),
    ]  # fmt: skip


async def scaled_runs(
    args: argparse.Namespace, options: Options, template: str, pair: int, run_id: str,
    done: int, rates: dict[tuple[str, str], float],
) -> list[dict[str, Any]]:  # fmt: skip
    results: list[dict[str, Any]] = []
    copied = dataclasses.replace(options, template=template)
    for scenario in scaled_scenarios(args):
        plain = scenario.name.removesuffix(SCALED)
        guess = rates.get((scenario.name, "worker")) or rates.get((plain, "worker"), 0.0)
        messages = args.messages or sized(guess or scenario.rate_guess, args.warmup + args.seconds)
        name = f"bench_{run_id}_{done + len(results) + 1}"
        result = await run_once(scenario, "worker", pair, name, messages, copied)
        results.append(result)
        print(_line(result), file=sys.stderr, flush=True)
        if not result["ok"]:
            break
        rates[(scenario.name, "worker")] = result["msgs_per_s"]
    return results


async def scaled_probe(args: argparse.Namespace, template: str, run_id: str) -> dict[str, Any]:
    """The hot queries' p99 and plans on a copy of the scaled database."""
    from benchmarks import scale

    env = services.run_env(args.dsn, args.amqp, f"bench_{run_id}_probe")
    print(f"[scale] probing the hot queries: {env.database}", file=sys.stderr, flush=True)
    try:
        await services.copy_template(env, template)
        found = await scale.probe(env.dsn)
    finally:
        await services.drop_database(env, args.dsn)
    return {"scenario": "scale-probe", "side": "worker", "pair": 1, "ok": True,
            "problems": [], **found}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.pairs, args.seconds, args.warmup = 1, 2.0, 0.0
        args.messages = args.messages or 300
        if args.scenarios == list(ALL_SCENARIOS):
            args.scenarios = list(SMOKE_SCENARIOS)
    started = datetime.now(UTC)
    run_id = started.strftime("%m%d%H%M%S") + uuid.uuid4().hex[:4]
    path = args.json or RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    load_before = os.getloadavg()
    try:
        asyncio.run(services.probe(args.dsn, args.amqp))
        with tempfile.TemporaryDirectory(prefix="billing-bench-") as logs:
            results = asyncio.run(benchmark(args, run_id, Path(logs)))
    except services.ServiceError as down:
        print(f"benchmarks.run: {down}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run in progress dropped its database and vhost
        print("benchmarks.run: interrupted", file=sys.stderr)
        return 130
    failures = [f"{r['scenario']}/{r['side']} (pair {r['pair']}): {p}"
                for r in results for p in r["problems"]]  # fmt: skip
    summary = summarize([r for r in results if r["scenario"] not in SPECIAL])
    summary.update(special_summary(results))
    evaluated = targets.evaluate(summary)  # reported only: a missed target fails nothing
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "ok": not failures, "run_id": run_id, "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(), "config": config,
        "host": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg()},
        "runs": results, "summary": summary, "targets": evaluated, "failures": failures,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if any(name not in SPECIAL for name in summary):
        print(table(summary))
    elif not summary:
        print("no run passed its check: nothing to report")
    if special := special_table(summary):
        print("\n" + special)
    print("\n" + targets.table(evaluated))
    profiled = [r for r in results if r.get("profile")]
    if profiled:
        print("\nwhere the worker's CPU goes (py-spy, share of busy samples by package):")
        for r in profiled:
            print(f"  {r['scenario']} (pair {r['pair']}): {profile.line(r['profile'])}")
    print(f"\nJSON: {path}")
    if failures:
        print(
            "\nFAILED (a fast wrong run is a failed run):", *failures, sep="\n  ", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"took {time.perf_counter() - started:.0f}s", file=sys.stderr)
    raise SystemExit(code)
