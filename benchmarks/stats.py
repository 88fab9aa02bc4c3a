"""Numbers of a run, medians over pairs, the worker's ratios to both floors, the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

CPU_GROUPS = ("consumer", "postgres", "rabbitmq", "loadgen")
SIDES = ("floor", "batched", "worker")  # the per-message floor, the batched floor, the worker
# summary key, printed label: the worker's msgs/s over each floor's, in the same pair
RATIOS = (
    ("ratio_worker_over_floor", "worker/floor"),
    ("ratio_worker_over_batched", "worker / batched floor"),
    ("ratio_over_1_process", "2 processes/1 process"),
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def window(points: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Throughput and latency of the completions `(time, latency s)` inside [start, end]."""
    seconds = max(end - start, 1e-9)
    latencies = [latency * 1000 for done, latency in points if start <= done <= end]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return {
        "window_s": round(seconds, 3),
        "completed_in_window": len(latencies),
        "msgs_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _spread(ratios: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
        "pairs": [round(r, 3) for r in ratios],
    }


def _side_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "processes": runs[0]["processes"],
        "msgs_per_s": _median([r["msgs_per_s"] for r in runs]),
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "latency": runs[0]["latency"],
        "cpu_s": {g: _median([r["cpu_s"].get(g) for r in runs]) for g in CPU_GROUPS},
        "consumer_cpu_ms_per_msg": _median([r["consumer_cpu_ms_per_msg"] for r in runs]),
    }


def _ratio(numerators: dict[int, float], denominators: dict[int, float]) -> dict[str, Any] | None:
    ratios = [numerators[p] / denominators[p] for p in numerators if denominators.get(p)]
    return _spread(ratios) if ratios else None


def summarize(runs: list[dict[str, Any]], baseline: str = "drain") -> dict[str, Any]:
    """Per scenario: each side's medians over pairs, and the worker over each floor.

    `ratio_worker_over_floor` and `ratio_worker_over_batched` are the worker's msgs/s over
    the per-message floor's and the batched floor's of the same pair, with their spread.

    A worker-only scenario (2 processes) is compared with the worker of `baseline` in
    the same pair instead: the gain of the second process.
    """
    ok = [r for r in runs if r["ok"]]
    summary: dict[str, Any] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in ok):
        entry: dict[str, Any] = {}
        rates: dict[str, dict[int, float]] = {}
        for side in SIDES:
            mine = [r for r in ok if r["scenario"] == scenario and r["side"] == side]
            if mine:
                entry[side] = _side_summary(mine)
                rates[side] = {r["pair"]: r["msgs_per_s"] for r in mine}
        if "worker" in rates and rates.keys() & {"floor", "batched"}:
            for floor, key in (("floor", "ratio_worker_over_floor"),
                               ("batched", "ratio_worker_over_batched")):  # fmt: skip
                if floor in rates:
                    entry[key] = _ratio(rates["worker"], rates[floor])
        elif "worker" in rates:
            one = {r["pair"]: r["msgs_per_s"] for r in ok
                   if r["scenario"] == baseline and r["side"] == "worker"}  # fmt: skip
            entry["ratio_over_1_process"] = _ratio(rates["worker"], one)
        summary[scenario] = entry
    return summary


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = ("scenario", "side", "procs", "msgs/s", "p50 ms", "p99 ms", "CPU s: consumer",
          "postgres", "rabbitmq", "loadgen", "consumer CPU ms/msg")  # fmt: skip


def table(summary: dict[str, Any]) -> str:
    """The medians as an aligned text table, then the ratios with their spread."""
    rows: list[tuple[str, ...]] = [HEADER]
    for scenario, entry in summary.items():
        if scenario in SPECIAL:  # special_table prints those
            continue
        for side in SIDES:
            if side in entry:
                s = entry[side]
                cpu = s["cpu_s"]
                rows.append((
                    scenario, side, str(s["processes"]), _fmt(s["msgs_per_s"]),
                    _fmt(s["p50_ms"]), _fmt(s["p99_ms"]),
                    *(_fmt(cpu.get(g), 2) for g in CPU_GROUPS),
                    _fmt(s["consumer_cpu_ms_per_msg"], 3),
                ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for scenario, entry in summary.items():
        if scenario in SPECIAL:
            continue
        for key, label in RATIOS:
            ratio = entry.get(key)
            if ratio:
                lines.append(
                    f"{label} msgs/s, {scenario}: median {ratio['median']:.3f} "
                    f"(min {ratio['min']:.3f} - max {ratio['max']:.3f} over "
                    f"{len(ratio['pairs'])} pair(s))"
                )
    return "\n".join(lines)


class _Special(tuple[str, ...]):
    """The scenarios with figures of their own (`in` also matches the scaled runs)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.endswith("@scale") or tuple.__contains__(self, name))


# mixed.py, rss.py, and the scaled runs and their probe (run.py --scale, scale.py)
SPECIAL = _Special(("mixed", "rss", "scale", "scale-probe"))


def special_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mixed scenario's and the rss run's medians over pairs, as the targets read them.

    mixed: each side's withdraws/s (the worker's while it does the whole mix), the
    worker's total msgs/s and its p99 per query kind at half saturation, and the worker
    over the floor on withdraws, pair by pair. rss: the worker's RSS, max and growth.
    """
    ok = [r for r in runs if r["ok"]]
    summary: dict[str, Any] = {}
    mixed = {side: [r for r in ok if r["scenario"] == "mixed" and r["side"] == side]
             for side in ("floor", "worker")}  # fmt: skip
    if any(mixed.values()):
        entry: dict[str, Any] = {}
        for side, mine in mixed.items():
            if mine:
                entry[side] = {"runs": len(mine),
                               "msgs_per_s": _median([r["msgs_per_s"] for r in mine]),
                               "withdraw_msgs_per_s": _median(
                                   [r["withdraw_msgs_per_s"] for r in mine])}  # fmt: skip
        if mixed["worker"]:
            kinds = {k for r in mixed["worker"] for k in (r.get("query_p99_ms") or {})}
            entry["worker"]["query_p99_ms"] = {
                k: _median([(r.get("query_p99_ms") or {}).get(k) for r in mixed["worker"]])
                for k in sorted(kinds)
            }
        if mixed["floor"] and mixed["worker"]:
            entry["ratio_withdraws_worker_over_floor"] = _ratio(
                {r["pair"]: r["withdraw_msgs_per_s"] for r in mixed["worker"]},
                {r["pair"]: r["withdraw_msgs_per_s"] for r in mixed["floor"]},
            )
        summary["mixed"] = entry
    scaled = _scale_summary(ok)
    if scaled:
        summary["scale"] = scaled
    rss = [r for r in ok if r["scenario"] == "rss"]
    if rss:
        summary["rss"] = {"worker": {
            "runs": len(rss), "msgs_per_s": _median([r["msgs_per_s"] for r in rss]),
            "rss_mb_max": _median([r["rss_mb_max"] for r in rss]),
            # Growth over a shorter run than 3 minutes is no reading of the target's.
            "rss_growth_mb_last_3_min": _median([r["rss_growth_mb_last_3_min"] for r in rss
                                                 if (r.get("rss_growth_span_s") or 0) >= 179]),
        }}  # fmt: skip
    return summary


def special_table(summary: dict[str, Any]) -> str:
    """The lines of the mixed scenario and the rss run, for the printed report."""
    lines = []
    mixed = summary.get("mixed", {})
    for side in ("floor", "worker"):
        if side in mixed:
            s = mixed[side]
            lines.append(f"mixed, {side}: {_fmt(s['msgs_per_s'])} msgs/s, withdraws "
                         f"{_fmt(s['withdraw_msgs_per_s'])} msgs/s")  # fmt: skip
    if queries := mixed.get("worker", {}).get("query_p99_ms"):
        lines.append("mixed, worker at half saturation, p99 ms: "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in queries.items()))  # fmt: skip
    if ratio := mixed.get("ratio_withdraws_worker_over_floor"):
        lines.append(f"worker/floor withdraws/s, mixed: median {ratio['median']:.3f} "
                     f"(min {ratio['min']:.3f} - max {ratio['max']:.3f})")  # fmt: skip
    if scaled := scale_table(summary):
        lines.append(scaled)
    if "rss" in summary:
        r = summary["rss"]["worker"]
        growth = _fmt(r["rss_growth_mb_last_3_min"])
        lines.append(f"rss: {_fmt(r['msgs_per_s'])} msgs/s, RSS max {_fmt(r['rss_mb_max'])} MB, "
                     f"growth {growth} MB over the last 3 minutes")  # fmt: skip
    return "\n".join(lines)


def _scale_summary(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The scaled runs against the same scenario's worker on an empty database, pair by
    pair (msgs/s of drain; p50 and p99 of rpc), and the probe's query p99 and scans."""
    entry: dict[str, Any] = {}
    for run in (r for r in ok if r["scenario"].endswith("@scale")):
        plain = run["scenario"].removesuffix("@scale")
        empty = next((r for r in ok if r["scenario"] == plain and r["side"] == "worker"
                      and r["pair"] == run["pair"]), None)  # fmt: skip
        if empty is None:
            continue
        pairs = entry.setdefault("_pairs", {})
        if run["rpc_concurrency"]:
            for key, name in (("p50_ms", "rpc_p50_ratio"), ("p99_ms", "rpc_p99_ratio")):
                if run[key] and empty[key]:
                    pairs.setdefault(name, []).append(run[key] / empty[key])
        elif empty["msgs_per_s"]:
            pairs.setdefault("drain_ratio_scaled_over_empty", []).append(
                run["msgs_per_s"] / empty["msgs_per_s"]
            )
        entry.setdefault("runs", []).append(
            {"scenario": run["scenario"], "pair": run["pair"], "msgs_per_s": run["msgs_per_s"],
             "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "empty_msgs_per_s":
             empty["msgs_per_s"], "empty_p50_ms": empty["p50_ms"], "empty_p99_ms": empty["p99_ms"]}
        )  # fmt: skip
    for name, ratios in entry.pop("_pairs", {}).items():
        entry[name] = _spread(ratios)
    probe = next((r for r in ok if r["scenario"] == "scale-probe"), None)
    if probe is not None:
        entry["query_p99_ms"] = probe.get("query_p99_ms", {})
        entry["query_p50_ms"] = probe.get("query_p50_ms", {})
        entry["seq_scans"] = probe.get("seq_scans", [])
    return entry


def scale_table(summary: dict[str, Any]) -> str:
    scaled = summary.get("scale")
    if not scaled:
        return ""
    lines = []
    for run in scaled.get("runs", []):
        lines.append(f"{run['scenario']} (pair {run['pair']}): {_fmt(run['msgs_per_s'])} msgs/s, "
                     f"p50 {_fmt(run['p50_ms'])} / p99 {_fmt(run['p99_ms'])} ms; empty database "
                     f"{_fmt(run['empty_msgs_per_s'])} msgs/s, p50 {_fmt(run['empty_p50_ms'])} / "
                     f"p99 {_fmt(run['empty_p99_ms'])} ms")  # fmt: skip
    if queries := scaled.get("query_p99_ms"):
        lines.append("scaled database, hot queries p99 ms: "
                     + ", ".join(f"{k} {_fmt(v, 2)}" for k, v in queries.items()))  # fmt: skip
    return "\n".join(lines)
