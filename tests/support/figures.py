"""The fault suite's figures: what was tried and what survived, gathered across tests.

Tests call `record(section, **counts)`. This module is also a pytest plugin (named in
`tests/conftest.py`): at the end of the run it prints the totals and writes them to
`tests/faults/last-run.json`.

Under pytest-xdist each worker process gathers its own figures and hands them to the
controller, which adds them up. `make test` runs pytest twice (the `serial` tests
alone, then the rest in parallel); the second run is told so by
BILLING_FAULT_FIGURES=append and adds its figures to those the first one wrote.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
LAST_RUN = Path(__file__).resolve().parents[1] / "faults" / "last-run.json"
_durations: dict[str, float] = {}


def record(section: str, **values: Any) -> None:
    """Add counts (numbers are summed across calls) or set other values."""
    target = FIGURES[section]
    for name, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            target[name] = target.get(name, 0) + value
        else:
            target[name] = value


def totals() -> dict[str, Any]:
    sections = {name: dict(values) for name, values in FIGURES.items()}
    lost = sum(values.get("lost", 0) for values in sections.values())
    commands = sum(values.get("commands", 0) for values in sections.values())
    inputs = sum(values.get("inputs_tried", 0) for values in sections.values())
    return {
        "commands": commands,
        "kills_survived": sections.get("crashes", {}).get("kills", 0),
        "broker_restarts": sections.get("infrastructure", {}).get("broker_restarts", 0),
        "database_restarts": sections.get("infrastructure", {}).get("database_restarts", 0),
        "hostile_inputs_tried": inputs,
        "lost": lost,
        "sections": sections,
    }


def _summary() -> dict[str, Any]:
    summary = totals()
    summary["seconds"] = round(sum(_durations.values()), 1)
    summary["tests"] = len(_durations)
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return summary


def _add(sections: dict[str, dict[str, Any]]) -> None:
    for section, values in sections.items():
        record(section, **values)


# ---------------------------------------------------------------------------- plugin


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller too: xdist hands it every worker's reports."""
    if "tests/faults/" in report.nodeid.replace("\\", "/") or report.nodeid.startswith("faults/"):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    shipped = getattr(session.config, "workeroutput", None)
    if shipped is not None:  # an xdist worker: the controller reports
        shipped["fault_figures"] = json.dumps(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist's controller: a worker finished; add up the figures it gathered."""
    shipped = getattr(node, "workeroutput", {}).get("fault_figures")
    if shipped:
        _add(json.loads(shipped))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES or hasattr(terminalreporter.config, "workeroutput"):
        return
    summary = _summary()
    if os.environ.get("BILLING_FAULT_FIGURES") == "append" and LAST_RUN.exists():
        earlier = json.loads(LAST_RUN.read_text())
        _add(earlier["sections"])
        summary = {
            **_summary(),
            "seconds": round(summary["seconds"] + earlier["seconds"], 1),
            "tests": summary["tests"] + earlier["tests"],
        }
    LAST_RUN.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    terminalreporter.section("fault suite figures")
    for name in (
        "commands",
        "kills_survived",
        "broker_restarts",
        "database_restarts",
        "hostile_inputs_tried",
        "lost",
        "tests",
        "seconds",
    ):
        terminalreporter.write_line(f"{name:>22}: {summary[name]}")
    for section, values in sorted(summary["sections"].items()):
        terminalreporter.write_line(f"{section:>22}: {json.dumps(values, sort_keys=True)}")
    terminalreporter.write_line(f"written to {LAST_RUN}")
