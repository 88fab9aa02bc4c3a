"""Fault suite: every test gets its own database and its own RabbitMQ vhost.

Its own vhost keeps one test's stragglers (a retry copy coming back from a delay queue, a
dead letter, a redelivered callback) out of the next test's database. At the end of the
run the figures gathered by the tests (`support.figures`) are printed and written to
`tests/faults/last-run.json`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from support import figures, services

HERE = Path(__file__).parent
_durations: dict[str, float] = {}


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Invariants are judged on the test's own data only."""
    return fresh_database_url


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    name = f"billing-faults-{uuid.uuid4().hex[:10]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("the fault suite needs a broker it can administer (rabbitmqctl)")
    yield url
    services.delete_vhost(name)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/" in report.nodeid.replace("\\", "/") or report.nodeid.startswith("faults/"):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def _summary() -> dict[str, Any]:
    summary = figures.totals()
    summary["seconds"] = round(sum(_durations.values()), 1)
    summary["tests"] = len(_durations)
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return summary


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.FIGURES:
        return
    summary = _summary()
    (HERE / "last-run.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
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
    terminalreporter.write_line(f"written to {HERE / 'last-run.json'}")
