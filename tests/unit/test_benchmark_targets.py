"""The benchmark's targets say met, not met or not measured from a summary, and the summary
compares the worker with both floors (benchmarks/targets.py, benchmarks/stats.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import stats, targets
from benchmarks.targets import MET, NOT_MEASURED, NOT_MET


def spread(median: float, pairs: int = 3) -> dict[str, Any]:
    return {"median": median, "min": median, "max": median, "pairs": [median] * pairs}


def side(runs: int = 3, **figures: Any) -> dict[str, Any]:
    return {"runs": runs, "processes": 1, **figures}


def all_met() -> dict[str, Any]:
    """A summary that meets every target, some of them exactly on the line."""
    return {
        "drain": {
            "floor": side(msgs_per_s=800.0), "batched": side(msgs_per_s=2400.0),
            "worker": side(msgs_per_s=1800.0),
            "ratio_worker_over_floor": spread(2.25), "ratio_worker_over_batched": spread(0.75),
        },
        "hot": {"ratio_worker_over_batched": spread(0.7)},  # exactly the target: met
        "rpc-c1": {"floor": side(p50_ms=2.0), "worker": side(p50_ms=2.3)},
        "rpc-c64": {
            "floor": side(p99_ms=80.0), "worker": side(p99_ms=80.0),
            "ratio_worker_over_floor": spread(1.1),
        },
        "mixed": {
            "worker": side(withdraw_msgs_per_s=1500.0,
                           query_p99_ms={"wallet.balance": 12.5, "transactions.list": 50.0}),
            "floor": side(withdraw_msgs_per_s=1000.0),
        },
        "rss": {"worker": side(rss_mb_max=180.0, rss_growth_mb_last_3_min=0.5)},
        "scale": {
            "drain_ratio_scaled_over_empty": 0.9, "rpc_p50_ratio": 1.02,
            "rpc_p99_ratio": spread(1.15), "query_p99_ms": {"balance": 3.0, "history": 19.0},
            "seq_scans": [],
        },
    }  # fmt: skip


def statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {result["name"]: result["status"] for result in targets.evaluate(summary)}


def test_a_summary_that_meets_every_target_is_reported_met() -> None:
    assert set(statuses(all_met()).values()) == {MET}


def test_every_target_is_not_measured_on_an_empty_summary() -> None:
    results = targets.evaluate({})

    assert [result["status"] for result in results] == [NOT_MEASURED] * len(targets.TARGETS)
    assert all(result["measured"] is None for result in results)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(summary: dict[str, Any]) -> None:
        node = summary
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


MISSES = {
    "drain vs batched floor": _set(("drain", "ratio_worker_over_batched"), spread(0.69)),
    "drain vs floor": _set(("drain", "ratio_worker_over_floor"), spread(1.99)),
    "hot vs batched floor": _set(("hot", "ratio_worker_over_batched"), spread(0.5)),
    "rpc-c1 p50": _set(("rpc-c1", "worker", "p50_ms"), 2.5),
    "rpc-c64 msgs/s": _set(("rpc-c64", "ratio_worker_over_floor"), spread(0.95)),
    "rpc-c64 p99": _set(("rpc-c64", "worker", "p99_ms"), 80.5),
    "mixed withdraws": _set(("mixed", "worker", "withdraw_msgs_per_s"), 1499.0),
    "mixed queries p99": _set(("mixed", "worker", "query_p99_ms", "wallet.balance"), 51.0),
    "rss max": _set(("rss", "worker", "rss_mb_max"), 201.0),
    "rss flat": _set(("rss", "worker", "rss_growth_mb_last_3_min"), 6.0),
    "scale drain": _set(("scale", "drain_ratio_scaled_over_empty"), 0.8),
    "scale rpc p50": _set(("scale", "rpc_p50_ratio"), 1.2),
    "scale rpc p99": _set(("scale", "rpc_p99_ratio"), spread(1.3)),
    "scale queries p99": _set(("scale", "query_p99_ms", "history"), 21.0),
    "scale seq scans": _set(("scale", "seq_scans"), ["history: Seq Scan on transactions"]),
}


def test_every_target_has_a_miss_below() -> None:
    assert set(MISSES) == {target.name for target in targets.TARGETS}


@pytest.mark.parametrize("name", list(MISSES))
def test_a_figure_past_its_target_is_not_met_and_leaves_the_others_met(name: str) -> None:
    summary = copy.deepcopy(all_met())
    MISSES[name](summary)

    found = statuses(summary)

    assert found[name] == NOT_MET
    assert {other for other, status in found.items() if status != MET} == {name}


@pytest.mark.parametrize(
    ("absent", "names"),
    [
        ("drain", {"drain vs batched floor", "drain vs floor"}),
        ("hot", {"hot vs batched floor"}),
        ("rpc-c1", {"rpc-c1 p50"}),
        ("rpc-c64", {"rpc-c64 msgs/s", "rpc-c64 p99"}),
        ("mixed", {"mixed withdraws", "mixed queries p99"}),
        ("rss", {"rss max", "rss flat"}),
        ("scale", {"scale drain", "scale rpc p50", "scale rpc p99", "scale queries p99",
                   "scale seq scans"}),
    ],
)  # fmt: skip
def test_an_absent_scenario_is_not_measured_and_fails_nothing(absent: str, names: set[str]) -> None:
    summary = all_met()
    del summary[absent]

    found = statuses(summary)

    assert {name for name, status in found.items() if status == NOT_MEASURED} == names
    assert {name for name, status in found.items() if status == NOT_MET} == set()


def test_a_missing_figure_or_floor_is_not_measured() -> None:
    summary = all_met()
    del summary["rpc-c1"]["floor"]  # e.g. --scenarios gave the worker alone
    summary["drain"]["ratio_worker_over_batched"] = None  # no batched run passed
    summary["scale"]["query_p99_ms"] = {}

    found = statuses(summary)

    assert found["rpc-c1 p50"] == NOT_MEASURED
    assert found["drain vs batched floor"] == NOT_MEASURED
    assert found["scale queries p99"] == NOT_MEASURED


def test_a_figure_over_fewer_than_three_pairs_is_evaluated_and_flagged() -> None:
    summary = all_met()
    summary["drain"]["ratio_worker_over_floor"] = spread(1.5, pairs=1)
    summary["rpc-c1"]["worker"]["runs"] = 2

    results = {result["name"]: result for result in targets.evaluate(summary)}

    assert results["drain vs floor"]["status"] == NOT_MET
    assert results["drain vs floor"]["pairs"] == 1
    assert "1 pair(s) < 3" in results["drain vs floor"]["measured"]
    assert "2 pair(s) < 3" in results["rpc-c1 p50"]["measured"]
    assert "<" not in results["drain vs batched floor"]["measured"]  # 3 pairs: no flag


def test_the_measured_text_names_the_figure_that_missed() -> None:
    summary = all_met()
    summary["mixed"]["worker"]["query_p99_ms"]["transactions.list"] = 75.0

    results = {result["name"]: result for result in targets.evaluate(summary)}

    assert "transactions.list" in results["mixed queries p99"]["measured"]
    assert "75" in results["mixed queries p99"]["measured"]
    assert results["drain vs floor"]["measured"] == "2.250 (median)"
    assert results["rpc-c1 p50"]["measured"] == "worker 2.3 ms, floor 2 ms (1.150 x)"


def test_the_table_lists_every_target_with_its_status() -> None:
    summary = all_met()
    del summary["rss"]
    summary["hot"]["ratio_worker_over_batched"] = spread(0.4)

    printed = targets.table(targets.evaluate(summary))

    lines = printed.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["target", "measured", "status"]
    for target in targets.TARGETS:
        assert target.target in printed
    assert "| not met" in printed
    assert "| not measured" in printed
    assert lines[-1].startswith("targets: 12 met, 1 not met, 2 not measured")


def run(scenario: str, side: str, pair: int, rate: float) -> dict[str, Any]:
    return {"ok": True, "scenario": scenario, "side": side, "pair": pair, "processes": 1,
            "msgs_per_s": rate, "p50_ms": 10.0, "p99_ms": 20.0, "latency": "round trip",
            "cpu_s": {"consumer": 1.0}, "consumer_cpu_ms_per_msg": 0.5}  # fmt: skip


def test_the_summary_compares_the_worker_with_each_floor_of_its_own_pair() -> None:
    runs = [run("drain", s, pair, rate)
            for pair, rates in enumerate([(100, 300, 200), (50, 250, 100), (100, 400, 250)], 1)
            for s, rate in zip(("floor", "batched", "worker"), rates, strict=True)]  # fmt: skip

    summary = stats.summarize(runs)

    drain = summary["drain"]
    assert set(drain) >= {"floor", "batched", "worker"}
    assert drain["ratio_worker_over_floor"]["pairs"] == [2.0, 2.0, 2.5]
    assert drain["ratio_worker_over_batched"]["pairs"] == [0.667, 0.4, 0.625]
    assert drain["ratio_worker_over_batched"]["median"] == 0.625
    printed = stats.table(summary)
    assert "worker/floor msgs/s, drain: median 2.000" in printed
    assert "worker / batched floor msgs/s, drain: median 0.625" in printed
    assert any(line.split()[:2] == ["drain", "batched"] for line in printed.splitlines())
    assert statuses(summary)["drain vs batched floor"] == NOT_MET  # 0.625 < 0.7
    assert statuses(summary)["drain vs floor"] == MET  # 2.0 >= 2


def test_the_profile_counts_samples_by_the_package_of_the_running_frame() -> None:
    from benchmarks.profile import by_package, line

    raw = "\n".join([
        "main (/x/bin/billing-worker:1);run (/usr/lib/python3.11/asyncio/base_events.py:9);"
        "write (/usr/lib/python3.11/asyncio/selector_events.py:1057) 30",
        "main (/x/bin/billing-worker:1);fetch (/v/lib/python3.11/site-packages/asyncpg/"
        "connection.py:775) 50",
        "main (/x/bin/billing-worker:1);consume (billing_worker/messaging/pipeline.py:1) 20",
    ])  # fmt: skip
    profile = by_package(raw)
    assert profile == {"samples": 100, "by_package_pct": {"asyncpg": 50.0, "asyncio": 30.0,
                                                          "billing_worker": 20.0}}  # fmt: skip
    assert line(profile) == "asyncpg 50.0 %, asyncio 30.0 %, billing_worker 20.0 %"
    assert by_package("") == {"samples": 0, "by_package_pct": {}}
