"""The benchmark of issue 9: the real worker against the floor, in one run, on local services.

    .venv/bin/python -m benchmarks.run                # 3 pairs, 15 s per run, every scenario
    .venv/bin/python -m benchmarks.run --smoke        # 1 pair, ~2 s per run (the test suite)

Scenarios (each interleaved floor, worker, floor, worker ... over `--pairs`, each run in
a fresh database and vhost, each run checked for correctness):

    drain      pre-filled withdraws across the accounts plus deposit completions
    hot        pre-filled withdraws, all on one account
    rpc-c<n>   closed-loop request/reply, n clients (`--rpc-concurrency`)
    workers<n> `drain` with n worker processes (worker only; compared with 1 process)

Prints the medians (msgs/s, p50/p99 ms, CPU seconds per process) and the median
worker/floor ratio with its min-max over the pairs; writes the same as JSON. Exit code 0
when every run passed its check, 1 when one did not (the message says what is wrong),
2 when the services are unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
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
from benchmarks.scenario import Options, Scenario, run_once
from benchmarks.stats import summarize, table

RESULTS = Path(__file__).resolve().parent / "results"
ALL_SCENARIOS = ("drain", "hot", "rpc", "workers")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0] + " Needs rabbitmqctl (vhosts) and a PostgreSQL "
        "user allowed to create databases.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--dsn", default=services.DEFAULT_DSN, help="PostgreSQL server (any database on it); "
      "each run creates and drops bench_<run>_<n> there")  # fmt: skip
    a("--amqp", default=services.DEFAULT_AMQP, help="RabbitMQ; each run adds and deletes a vhost")
    a("--pairs", type=int, default=3, help="floor/worker pairs per scenario (>= 3 for a ratio)")
    a("--seconds", type=float, default=15.0, help="measured window of each run")
    a("--messages", type=int, default=None, help="messages pre-filled per run (default: sized "
      "from the last rate measured for that scenario and side, ~1.1 x rate x seconds)")  # fmt: skip
    a("--accounts", type=int, default=10_000, help="pre-funded accounts (one per user)")
    a(
        "--deposit-share",
        type=float,
        default=0.1,
        help="share of the pre-filled messages that are sandbox deposit completions (drain)",
    )
    a(
        "--scenarios",
        type=_csv(str, ALL_SCENARIOS),
        default=list(ALL_SCENARIOS),
        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}",
    )
    a(
        "--rpc-concurrency",
        type=_csv(int),
        default=[1, 64],
        help="closed-loop clients of the rpc scenarios (comma-separated)",
    )
    a("--worker-processes", type=int, default=2, help="worker processes of the workers scenario")
    a("--floor-prefetch", type=int, default=16, help="the floor's prefetch per queue")
    a("--floor-pool", type=int, default=16, help="the floor's PostgreSQL connections")
    a("--worker-setting", type=_setting, action="append", default=[], metavar="BILLING_X=V",
      help="extra worker setting, repeatable (e.g. BILLING_PREFETCH=16); the worker otherwise "
      "runs with its defaults and BILLING_LOG_LEVEL=WARNING")  # fmt: skip
    a("--startup-timeout", type=float, default=60.0, help="seconds for a consumer's first reply")
    a(
        "--tail-timeout",
        type=float,
        default=120.0,
        help="seconds to finish the messages left after the window (all must complete)",
    )
    a(
        "--settle",
        type=float,
        default=10.0,
        help="seconds the worker's outbox may take to publish everything after the last reply",
    )
    a(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON report (default benchmarks/results/<timestamp>.json)",
    )
    a(
        "--keep-failed",
        action="store_true",
        help="keep the database and vhost of a run that failed its check, for inspection",
    )
    a("--smoke", action="store_true", help="1 pair, 2 s per run, 300 messages, 1000 accounts: "
      "checks that everything works, measures nothing meaningful")  # fmt: skip
    return p


def options_from(args: argparse.Namespace, logs: Path) -> Options:
    return Options(
        dsn=args.dsn, amqp=args.amqp, logs=logs, seconds=args.seconds, accounts=args.accounts,
        deposit_share=args.deposit_share, floor_prefetch=args.floor_prefetch,
        floor_pool=args.floor_pool, worker_settings=dict(args.worker_setting),
        startup_timeout=args.startup_timeout, tail_timeout=args.tail_timeout,
        settle=args.settle, keep_failed=args.keep_failed,
    )  # fmt: skip


def _line(result: dict[str, Any]) -> str:
    if not result["ok"]:
        return "  FAILED: " + "; ".join(result["problems"])
    return (
        f"  {result['msgs_per_s']} msgs/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"consumer CPU {result['cpu_s']['consumer']} s, "
        f"{result['withdraws']} withdraws + {result['deposits']} deposits: check ok"
    )


async def benchmark(args: argparse.Namespace, run_id: str, logs: Path) -> list[dict[str, Any]]:
    options = options_from(args, logs)
    results: list[dict[str, Any]] = []
    rates: dict[tuple[str, str], float] = {}
    for pair in range(1, args.pairs + 1):
        for scenario in scenarios(args.scenarios, args.rpc_concurrency, args.worker_processes):
            for side in scenario.sides:
                guess = rates.get((scenario.name, side)) or rates.get((scenario.name, "floor"))
                messages = args.messages or sized(guess or scenario.rate_guess, args.seconds)
                name = f"bench_{run_id}_{len(results) + 1}"
                result = await run_once(scenario, side, pair, name, messages, options)
                results.append(result)
                print(_line(result), file=sys.stderr, flush=True)
                if not result["ok"]:
                    return results  # a fast wrong run is a failed run: stop here
                rates[(scenario.name, side)] = result["msgs_per_s"]
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.pairs, args.seconds = 1, 2.0
        args.messages = args.messages or 300
        args.accounts = min(args.accounts, 1000)
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
    failures = [f"{r['scenario']}/{r['side']} (pair {r['pair']}): {p}"
                for r in results for p in r["problems"]]  # fmt: skip
    summary = summarize(results)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "ok": not failures, "run_id": run_id, "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(), "config": config,
        "host": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg()},
        "runs": results, "summary": summary, "failures": failures,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(summary))
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
