"""A real Prometheus scrapes a real `billing-worker run` and finds every series the
Grafana dashboard queries, runs every dashboard query, and evaluates the alert rules.

Needs the `prometheus` binary (Debian's `prometheus` package; .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.server import free_port
from support.dashboards import ALERTS, alert_rules, concrete, dashboard_exprs, metric_names
from support.processes import Process, worker_env
from support.rpc import Bus

pytestmark = pytest.mark.integration

JOB = "billing-worker"
DEADLINE = 90.0  # seconds for the series to appear, scraped every second
NEVER = "0001-01-01T00:00:00Z"  # a rule's lastEvaluation before its first


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "no prometheus binary (Debian: apt-get install prometheus; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def api(port: int, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    url = f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as refused:  # 400/422: PromQL it refused, with its reason
        return json.loads(refused.read())


def answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


async def wait_for(check: Any, what: str, timeout: float = DEADLINE) -> Any:
    """Poll `check` (blocking, run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(0.5)


@pytest.fixture
async def worker(
    fresh_database_url: str, rabbitmq_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Process, int]]:
    port = free_port()
    env = worker_env(fresh_database_url, rabbitmq_url, metrics_port=port,
                     metrics_host="127.0.0.1", metrics_sample_seconds=1)  # fmt: skip
    process = Process("run", env, tmp_path / "worker.log")
    process.start()
    try:
        await process.ready()
        yield process, port
    finally:
        await process.stop()
        process.ensure_dead()


@pytest.fixture
def prometheus(worker: tuple[Process, int], tmp_path: Path) -> Iterator[int]:
    binary = prometheus_binary()
    _, worker_port = worker
    port = free_port()
    config = tmp_path / "prometheus.yaml"
    scrape = {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}
    settings = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [scrape],
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(  # noqa: S603 - the installed prometheus on a temporary config
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not answers(port, "/-/ready"):
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        log.close()


async def drive(rabbitmq_url: str) -> None:
    """Traffic that makes every labelled series of the dashboard appear: a sandbox
    deposit (a payment, a provider call, events), a refusal and a dead letter."""
    bus = Bus(rabbitmq_url, tap_dead_letters=False)
    await bus.start()
    try:
        user = f"prom-{uuid.uuid4().hex[:8]}"
        deposit = await bus.call(
            "billing.wallet.deposit",
            {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "sandbox",
             "amount": {"amount": "5.00", "currency": "USD"}},
        )  # fmt: skip
        assert deposit["ok"], deposit
        await bus.event("deposit.completed", lambda d: d["user_id"] == user)
        refused = await bus.call("billing.wallet.withdraw", {"idempotency_key": uuid.uuid4().hex,
                                 "user_id": user, "description": "too much",
                                 "amount": {"amount": "50.00", "currency": "USD"}})  # fmt: skip
        assert refused["error"]["code"] == "insufficient_funds"
        invalid = await bus.call("billing.wallet.withdraw", b"{broken")
        assert invalid["error"]["code"] == "invalid_message"
    finally:
        await bus.close()


async def test_prometheus_scrapes_every_series_the_dashboard_and_the_alerts_use(
    worker: tuple[Process, int], prometheus: int, rabbitmq_url: str
) -> None:
    await drive(rabbitmq_url)
    wanted = set().union(*map(metric_names, dashboard_exprs()))
    wanted |= set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))

    def scraped() -> set[str]:
        found = api(prometheus, "/api/v1/label/__name__/values", **{"match[]": f'{{job="{JOB}"}}'})
        return set(found.get("data") or [])

    deadline = time.monotonic() + DEADLINE
    while missing := wanted - await asyncio.to_thread(scraped):
        assert time.monotonic() < deadline, (
            f"series the dashboard or alerts use, never scraped: {missing}"
        )
        await asyncio.sleep(0.5)

    for expr in dashboard_exprs():  # valid PromQL, with Grafana's variables filled in
        result = await asyncio.to_thread(api, prometheus, "/api/v1/query", query=concrete(expr))
        assert result["status"] == "success", (expr, result)

    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(prometheus, "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule["lastEvaluation"] != NEVER for rule in rules)
        # Pending on the evaluations before the first scrape; inactive once it sees the worker.
        up = all(r["state"] == "inactive" for r in rules if r["name"] == "BillingNoWorkerUp")
        return rules if rules and done and up else None

    rules = await wait_for(evaluated, "the alert rules evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert {rule["health"] for rule in rules} == {"ok"}, rules  # every one evaluates
    state = {rule["name"]: rule["state"] for rule in rules}
    assert state["BillingMetricsSamplingFailing"] == "inactive", rules
