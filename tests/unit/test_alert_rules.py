"""The alert rules, their unit tests, the runbook and the dashboard agree with each other
and with what the worker exports.

promtool checks the rule file and runs its unit tests (deploy/prometheus/alerts.test.yaml);
the rest needs no Prometheus: every alert has a runbook entry and tests where it fires and
where it does not, every series the rules and the dashboard name is one the worker's
registry makes, and docs/metrics.md lists every billing series.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from billing_worker.metrics import Metrics
from support import dashboards
from support.dashboards import (
    ALERT_TESTS,
    ALERTS,
    METRICS_DOC,
    PROMETHEUS,
    RUNBOOK,
    SCRAPE_EXAMPLE,
    alert_rules,
    alert_tests,
    dashboard,
    dashboard_exprs,
    exported_names,
    metric_names,
    panels,
)

SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - promtool on the repository's own files
        [promtool(), *map(str, args)], cwd=PROMETHEUS, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_promtool_accepts_the_rules() -> None:
    done = run_promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    done = run_promtool("test", "rules", ALERT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_catches_a_rule_test_that_expects_the_wrong_thing(tmp_path: Path) -> None:
    """The unit tests can fail: one expecting an alert at the wrong time does."""
    text = ALERT_TESTS.read_text().replace(
        "rule_files:\n  - alerts.yaml", f"rule_files:\n  - {ALERTS}"
    )
    broken = tmp_path / "broken.test.yaml"
    broken.write_text(text.replace("eval_time: 40m", "eval_time: 20m", 1))
    done = run_promtool("test", "rules", broken)
    assert done.returncode != 0
    assert "BillingPaymentsStuckProcessing" in done.stdout + done.stderr


def test_promtool_accepts_the_example_scrape_configuration() -> None:
    done = run_promtool("check", "config", SCRAPE_EXAMPLE)
    assert done.returncode == 0, done.stdout + done.stderr


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the `###` headings (lower case, spaces to dashes)."""
    headings = re.findall(r"^### (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-") for title in headings}


def test_every_alert_has_a_severity_a_summary_and_its_runbook_entry() -> None:
    runbook = anchors(RUNBOOK.read_text())
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes["summary"], name
        assert notes["description"], name
        assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in runbook, f"docs/runbook.md has no ### {name}"


def test_every_runbook_entry_is_an_alert() -> None:
    alerts = {rule["alert"].lower() for rule in alert_rules()}
    assert anchors(RUNBOOK.read_text()) == alerts


def test_every_alert_is_tested_where_it_fires_and_where_it_must_not() -> None:
    fires: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for case in alert_tests():
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet)[check["alertname"]] += 1
    names = {rule["alert"] for rule in alert_rules()}
    assert set(fires) == names, f"never seen firing: {sorted(names - set(fires))}"
    assert set(quiet) >= names, f"never seen quiet: {sorted(names - set(quiet))}"


def test_every_series_the_rules_and_the_dashboard_use_is_exported_by_the_worker() -> None:
    exported = exported_names(Metrics().registry) | dashboards.SYNTHETIC
    for expr in [rule["expr"] for rule in alert_rules()] + dashboard_exprs():
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} uses series the worker does not export: {unknown}"


def test_the_dashboard_shows_what_an_on_call_engineer_needs() -> None:
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert {
        "billing_messages_handled_seconds_count",  # throughput by queue
        "billing_messages_handled_seconds_bucket",  # latency by queue
        "billing_refusals_total",  # refusals by code
        "billing_provider_call_seconds_count",  # provider errors
        "billing_provider_call_seconds_bucket",  # provider latency
        "billing_outbox_lag_seconds",
        "billing_queue_messages",  # queue and dead-letter depth
        "billing_payments_stuck_processing",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    } <= used


def test_every_dashboard_query_selects_the_chosen_job_and_data_source() -> None:
    board = dashboard()
    assert {var["name"] for var in board["templating"]["list"]} == {"datasource", "job"}
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            expr = target["expr"]
            for name in metric_names(expr):
                selectors = re.findall(rf"\b{re.escape(name)}\{{([^}}]*)\}}", expr)
                assert selectors, f"{panel['title']}: {name} without a selector"
                assert all('job=~"$job"' in s for s in selectors), panel["title"]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (queue, le) (rate(a_bucket{job=~"$job", q="x y"}'
        "[$__rate_interval]))) / on (queue) group_left (code) b_total > 1e3 "
        'and absent(up{job="w"} == 1) or c offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c"}


def test_docs_metrics_lists_every_billing_series() -> None:
    documented = METRICS_DOC.read_text()
    for family in Metrics().registry.collect():
        if not family.name.startswith("billing_"):
            continue
        shown = {"counter": f"{family.name}_total", "info": f"{family.name}_info"}
        name = shown.get(family.type, family.name)
        assert f"`{name}`" in documented, f"docs/metrics.md does not list {name}"
