"""The targets of issue 18, evaluated from a benchmark summary (benchmarks/stats.py).

Each target reads figures of the summary -- medians over the interleaved pairs of a run
-- and is `met`, `not met`, or `not measured` when its scenario or figure is absent
(`--scenarios` left it out, or the scenario does not exist yet). A figure taken over fewer
than 3 pairs is evaluated all the same and flagged: it says little.

A missed target is reported, never fatal: only a failed correctness check changes the
exit code of `benchmarks.run`.

To add a target, append a `Target` to `TARGETS`: a name, the target as printed, and a
measure -- one of the helpers below (`ratio_at_least`, `worker_vs_floor`, `at_most`,
`at_least`, `every_at_most`, `nothing_listed`) or any function `summary -> Reading | None`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
MIN_PAIRS = 3

Summary = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a measure found: the figure as printed, whether it meets the target."""

    measured: str
    met: bool
    pairs: int | None = None  # pairs (or runs) behind the figure, when known


Measure = Callable[[Summary], Reading | None]  # None: not measured


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    target: str
    measure: Measure

    def evaluate(self, summary: Summary) -> dict[str, Any]:
        reading = self.measure(summary)
        if reading is None:
            return {"name": self.name, "target": self.target, "measured": None,
                    "status": NOT_MEASURED, "pairs": None}  # fmt: skip
        measured = reading.measured
        if reading.pairs is not None and reading.pairs < MIN_PAIRS:
            measured += f" [{reading.pairs} pair(s) < {MIN_PAIRS}]"
        return {"name": self.name, "target": self.target, "measured": measured,
                "status": MET if reading.met else NOT_MET, "pairs": reading.pairs}  # fmt: skip


def figure(summary: Summary, *path: str) -> Any:
    """summary[path[0]][path[1]]...; None when any step is absent."""
    node: Any = summary
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return node


def number(value: Any) -> tuple[float, int | None] | None:
    """A plain number, or the median of a spread {median, pairs}; with its pair count."""
    if isinstance(value, Mapping):
        found, pairs = number(value.get("median")), value.get("pairs")
        if found is None:
            return None
        return found[0], len(pairs) if isinstance(pairs, list) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None
    return None


def ratio_at_least(scenario: str, key: str, least: float) -> Measure:
    """A ratio of the summary (its median over the pairs) of at least `least`."""

    def measure(summary: Summary) -> Reading | None:
        found = number(figure(summary, scenario, key))
        if found is None:
            return None
        value, pairs = found
        return Reading(f"{value:.3f} (median)", value >= least, pairs)

    return measure


def _runs(summary: Summary, scenario: str, *sides: str) -> int | None:
    runs = [figure(summary, scenario, side, "runs") for side in sides]
    return min(runs) if all(isinstance(r, int) for r in runs) else None


def worker_vs_floor(scenario: str, key: str, factor: float, unit: str, *, most: bool) -> Measure:
    """The worker's median `key` against `factor` x the floor's: at most it (`most`), or at
    least it."""

    def measure(summary: Summary) -> Reading | None:
        worker = number(figure(summary, scenario, "worker", key))
        base = number(figure(summary, scenario, "floor", key))
        if worker is None or base is None:
            return None
        limit = factor * base[0]
        met = worker[0] <= limit if most else worker[0] >= limit
        text = f"worker {worker[0]:g} {unit}, floor {base[0]:g} {unit}"
        if base[0]:
            text += f" ({worker[0] / base[0]:.3f} x)"
        return Reading(text, met, _runs(summary, scenario, "worker", "floor"))

    return measure


def _bounded(path: tuple[str, ...], limit: float, unit: str, *, most: bool) -> Measure:
    def measure(summary: Summary) -> Reading | None:
        found = number(figure(summary, *path))
        if found is None:
            return None
        value, pairs = found
        return Reading(f"{value:g}{' ' + unit if unit else ''}",
                       value <= limit if most else value >= limit, pairs)  # fmt: skip

    return measure


def at_most(path: tuple[str, ...], limit: float, unit: str = "") -> Measure:
    """One figure of the summary (a number or a spread's median) at most `limit`."""
    return _bounded(path, limit, unit, most=True)


def at_least(path: tuple[str, ...], limit: float, unit: str = "") -> Measure:
    """One figure of the summary (a number or a spread's median) at least `limit`."""
    return _bounded(path, limit, unit, most=False)


def every_at_most(path: tuple[str, ...], limit: float, unit: str) -> Measure:
    """Every figure of a mapping {name: value} at most `limit`; the worst one printed."""

    def measure(summary: Summary) -> Reading | None:
        found = figure(summary, *path)
        if not isinstance(found, Mapping) or not found:
            return None
        values: dict[str, float] = {}
        for name, value in found.items():
            if (read := number(value)) is None:
                return None
            values[str(name)] = read[0]
        worst = max(values, key=values.__getitem__)
        over = [name for name, value in values.items() if value > limit]
        text = f"worst {worst}: {values[worst]:g} {unit}"
        if over:
            text += f" ({len(over)} of {len(values)} over)"
        return Reading(text, not over)

    return measure


def nothing_listed(path: tuple[str, ...], what: str) -> Measure:
    """A list of problems that must be empty."""

    def measure(summary: Summary) -> Reading | None:
        found = figure(summary, *path)
        if not isinstance(found, list):
            return None
        if not found:
            return Reading(f"no {what}", True)
        return Reading(f"{len(found)} {what}: {', '.join(map(str, found[:3]))}", False)

    return measure


TARGETS: list[Target] = [
    Target("drain vs batched floor", "drain: worker msgs/s >= 0.7 x batched floor's",
           ratio_at_least("drain", "ratio_worker_over_batched", 0.7)),
    Target("drain vs floor", "drain: worker msgs/s >= 2 x per-message floor's",
           ratio_at_least("drain", "ratio_worker_over_floor", 2.0)),
    Target("hot vs batched floor", "hot: worker msgs/s >= 0.7 x batched floor's",
           ratio_at_least("hot", "ratio_worker_over_batched", 0.7)),
    Target("rpc-c1 p50", "rpc-c1: worker p50 <= 1.2 x per-message floor's p50",
           worker_vs_floor("rpc-c1", "p50_ms", 1.2, "ms", most=True)),
    Target("rpc-c64 msgs/s", "rpc-c64: worker msgs/s >= per-message floor's",
           ratio_at_least("rpc-c64", "ratio_worker_over_floor", 1.0)),
    Target("rpc-c64 p99", "rpc-c64: worker p99 <= per-message floor's p99",
           worker_vs_floor("rpc-c64", "p99_ms", 1.0, "ms", most=True)),
    Target("mixed withdraws", "mixed: worker withdraws/s >= 1.5 x per-message floor's",
           worker_vs_floor("mixed", "withdraw_msgs_per_s", 1.5, "msgs/s", most=False)),
    Target("mixed queries p99", "mixed: every query p99 <= 50 ms (half saturation)",
           every_at_most(("mixed", "worker", "query_p99_ms"), 50.0, "ms")),
    Target("rss max", "rss: worker RSS <= 200 MB",
           at_most(("rss", "worker", "rss_mb_max"), 200.0, "MB")),
    Target("rss flat", "rss: worker RSS growth <= 5 MB over the last 3 minutes",
           at_most(("rss", "worker", "rss_growth_mb_last_3_min"), 5.0, "MB")),
    Target("scale drain", "scale: drain msgs/s >= 0.85 x the empty database's",
           at_least(("scale", "drain_ratio_scaled_over_empty"), 0.85)),
    Target("scale rpc p50", "scale: rpc p50 <= 1.15 x the empty database's",
           at_most(("scale", "rpc_p50_ratio"), 1.15)),
    Target("scale rpc p99", "scale: rpc p99 <= 1.15 x the empty database's",
           at_most(("scale", "rpc_p99_ratio"), 1.15)),
    Target("scale queries p99", "scale: every listed query p99 <= 20 ms",
           every_at_most(("scale", "query_p99_ms"), 20.0, "ms")),
    Target("scale seq scans", "scale: no sequential scan on a listed query",
           nothing_listed(("scale", "seq_scans"), "sequential scan(s)")),
]  # fmt: skip


def evaluate(summary: Summary, targets: list[Target] | None = None) -> list[dict[str, Any]]:
    """{name, target, measured, status, pairs} of every target, in order."""
    return [target.evaluate(summary) for target in (TARGETS if targets is None else targets)]


def table(results: list[dict[str, Any]]) -> str:
    """target | measured | status, aligned; then how many were met."""
    rows = [("target", "measured", "status")]
    rows += [(r["target"], r["measured"] or "-", r["status"]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    lines.insert(1, "-+-".join("-" * w for w in widths))
    counts = {s: sum(r["status"] == s for r in results) for s in (MET, NOT_MET, NOT_MEASURED)}
    lines.append(
        f"targets: {counts[MET]} met, {counts[NOT_MET]} not met, "
        f"{counts[NOT_MEASURED]} not measured (a missed target does not fail the run)"
    )
    return "\n".join(lines)
