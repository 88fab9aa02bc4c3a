"""The fault suite's figures: what was tried and what survived, gathered across tests.

Tests call `record(section, **counts)`; `tests/faults/conftest.py` prints the totals at
the end of the run and writes them to `tests/faults/last-run.json`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)


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
