"""The queries of the Grafana dashboard and the alert rules, and the series they name.

Shared by the unit test of the rules (every series they use is one the worker's registry
makes) and the scrape test (every series they use reaches a real Prometheus).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "billing-worker.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yaml"
SCRAPE_EXAMPLE = PROMETHEUS / "prometheus.example.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Made by Prometheus itself for every target, not by the worker.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Words of PromQL that look like metric names.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan"}
)  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# What a histogram, a counter or an info metric exports besides its family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_tests() -> list[dict[str, Any]]:
    return list(yaml.safe_load(ALERT_TESTS.read_text())["tests"])


def concrete(expr: str, job: str = "billing-worker", rate_interval: str = "1m") -> str:
    """A dashboard query with Grafana's variables filled in, for Prometheus' API."""
    return expr.replace("$__rate_interval", rate_interval).replace("$job", job)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names
    and matchers, range durations and strings left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function (or an aggregation), or an operator
        if match.start() and text[match.start() - 1].isdigit():
            continue  # the exponent or unit of a number: 1e3, 5m
        names.add(name)
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry exports, those of label sets not seen yet too."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
