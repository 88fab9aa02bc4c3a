"""/metrics of a real worker: served without a redirect, with the process and build
series, refusals by code, and the sampled gauges following the real outbox and queues."""

from __future__ import annotations

import asyncio
import http.client
import logging
import platform
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from billing_contracts import names
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import create_engine
from billing_worker.metrics import Metrics
from billing_worker.ops import health
from billing_worker.sampler import Sampler
from billing_worker.settings import Settings
from fakes.server import free_port
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration

WITHDRAW, DEPOSIT = "billing.wallet.withdraw", "billing.wallet.deposit"
DLQ = names.DEAD_LETTER_QUEUE


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url  # the outbox and stuck payments are the whole database's


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    return make_settings(database_url, rabbitmq_url, metrics_port=free_port(),
                         metrics_host="127.0.0.1", metrics_sample_seconds=0.2)  # fmt: skip


@pytest.fixture
async def quiet_bus(worker: Worker, rabbitmq_url: str) -> AsyncIterator[Bus]:
    """A client that leaves the dead-letter queue alone (the default one empties it)."""
    bus = Bus(rabbitmq_url, tap_dead_letters=False)
    await bus.start()
    yield bus
    await bus.close()


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    """One GET, redirects not followed (urllib would follow a 307 silently)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        headers = {name.lower(): value for name, value in reply.getheaders()}
        return reply.status, headers, reply.read().decode()
    finally:
        connection.close()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in the text format; None when it is absent."""
    for line in text.splitlines():
        if line.startswith("#") or line.split("{")[0].split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0] if "{" in line else ""))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(worker: Worker) -> str:
    assert worker.settings.metrics_port is not None
    status, _, text = await asyncio.to_thread(get, worker.settings.metrics_port, "/metrics")
    assert status == 200
    return text


async def until(
    worker: Worker, check: Callable[[str], bool], what: str, timeout: float = 30
) -> str:
    """Scrape until `check` holds on the page (the sampler runs every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await scrape(worker)
        if check(text):
            return text
        assert time.monotonic() < deadline, f"never {what}:\n{text[-3000:]}"
        await asyncio.sleep(0.1)


async def test_metrics_answers_200_itself_with_the_process_and_build_series(
    worker: Worker,
) -> None:
    assert worker.settings.metrics_port is not None
    status, headers, text = await asyncio.to_thread(get, worker.settings.metrics_port, "/metrics")

    assert status == 200, headers  # no 307 to /metrics/
    assert headers["content-type"].startswith("text/plain")
    assert (sample(text, "process_resident_memory_bytes") or 0) > 0
    assert (sample(text, "process_cpu_seconds_total") or 0) > 0
    assert sample(text, "process_open_fds") is not None
    assert "python_gc_collections_total" in text
    [python] = series(text, "python_info")
    assert ("version", platform.python_version()) in python
    build = {"python": platform.python_version(), "version": metadata.version("billing-worker")}
    assert sample(text, "billing_worker_build_info", **build) == 1
    trailing = await asyncio.to_thread(get, worker.settings.metrics_port, "/metrics/")
    assert trailing[0] == 200
    assert "billing_worker_build_info" in trailing[2]


async def test_refusals_are_counted_by_their_code(worker: Worker, quiet_bus: Bus) -> None:
    text = await scrape(worker)
    assert sample(text, "billing_refusals_total", queue=WITHDRAW, code="insufficient_funds") is None

    for _ in range(2):
        reply = await quiet_bus.call(WITHDRAW, {"idempotency_key": uuid.uuid4().hex,
                                     "user_id": f"m-{uuid.uuid4().hex[:8]}", "description": "x",
                                     "amount": {"amount": "1.00", "currency": "USD"}})  # fmt: skip
        assert reply["error"]["code"] == "insufficient_funds"
    invalid = await quiet_bus.call(WITHDRAW, b"{broken")
    assert invalid["error"]["code"] == "invalid_message"

    # Counted once the message is acknowledged, which may follow its reply.
    text = await until(
        worker,
        lambda t: sample(t, "billing_refusals_total", queue=WITHDRAW, code="invalid_message") == 1,
        "the invalid message counted",
    )
    refusals = {
        labels: value
        for labels, value in series(text, "billing_refusals_total").items()
        if dict(labels)["queue"] == WITHDRAW
    }
    assert refusals == {
        (("code", "insufficient_funds"), ("queue", WITHDRAW)): 2,
        (("code", "invalid_message"), ("queue", WITHDRAW)): 1,
    }
    # The per-message histogram keeps its outcomes (dashboards of earlier versions).
    count = "billing_messages_handled_seconds_count"
    assert sample(text, count, outcome="refused", queue=WITHDRAW) == 2
    assert sample(text, count, outcome="invalid", queue=WITHDRAW) == 1


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every series of `name`: sorted label pairs -> value."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])))
            found[labels] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.fixture
async def failing_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A worker whose sandbox cannot reach its provider: deposits fail every attempt."""
    from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
    from billing_worker.providers.sandbox import SandboxGateway

    class Unreachable(SandboxGateway):
        async def create_payment(self, request: PaymentRequest) -> PaymentResult:
            raise ConnectionError("provider unreachable")

    gateways = Gateways({"sandbox": Unreachable()}, default="sandbox")
    worker = build_worker(settings.model_copy(update={"max_deliveries": 2}), gateways=gateways)
    async with worker.app:
        yield worker


async def test_a_message_dead_lettered_after_its_attempts_counts_one_internal_error(
    failing_worker: Worker, rabbitmq_url: str
) -> None:
    bus = Bus(rabbitmq_url, tap_dead_letters=False)
    await bus.start()
    try:
        reply = await bus.call(DEPOSIT, {"idempotency_key": uuid.uuid4().hex,
                               "user_id": f"m-{uuid.uuid4().hex[:8]}",
                               "amount": {"amount": "3.00", "currency": "USD"}})  # fmt: skip
    finally:
        await bus.close()
    assert reply["error"]["code"] == "internal_error"

    text = await until(
        failing_worker,
        lambda t: (
            sample(t, "billing_refusals_total", code="internal_error", queue=DEPOSIT) is not None
        ),
        "the internal_error counted",
    )

    assert sample(text, "billing_refusals_total", code="internal_error", queue=DEPOSIT) == 1
    count = "billing_messages_handled_seconds_count"
    assert sample(text, count, outcome="retried", queue=DEPOSIT) == 1  # the first attempt
    assert sample(text, count, outcome="dead_lettered", queue=DEPOSIT) == 1


async def test_the_sampled_gauges_follow_the_queues_and_the_dead_letter_queue(
    worker: Worker, quiet_bus: Bus, rabbitmq_url: str
) -> None:
    queues = [*health.command_queues(worker.settings), DLQ]
    text = await until(
        worker,
        lambda t: all(sample(t, "billing_queue_messages", queue=q) is not None for q in queues),
        "every queue sampled",
    )
    assert sample(text, "billing_queue_consumers", queue=WITHDRAW) == 1  # this worker
    assert sample(text, "billing_queue_consumers", queue=DLQ) == 0
    assert sample(text, "billing_metrics_sample_up", source="broker") == 1
    assert sample(text, "billing_metrics_sample_up", source="database") == 1
    before = sample(text, "billing_queue_messages", queue=DLQ)
    [state] = await health.queue_states(rabbitmq_url, [DLQ])
    assert before == state.messages  # what the broker says, whatever earlier tests left

    await quiet_bus.call(WITHDRAW, b"{broken")  # answered, then dead-lettered

    assert before is not None
    await until(
        worker,
        lambda t: sample(t, "billing_queue_messages", queue=DLQ) == before + 1,
        "the dead letter counted",
    )


async def test_the_sampled_gauges_show_an_unpublished_outbox_row_until_it_is_published(
    worker: Worker, quiet_bus: Bus
) -> None:
    await until(worker, lambda t: sample(t, "billing_outbox_unpublished_events") == 0,
                "an empty outbox")  # fmt: skip
    # The publisher stopped (and the watchdog, which would restart it): what a commit
    # writes now waits in the outbox, as it does while the broker is unreachable.
    await worker.watchdog.stop()
    await worker.publisher.stop()
    try:
        reply = await quiet_bus.call(DEPOSIT, {"idempotency_key": uuid.uuid4().hex,
                                     "user_id": f"m-{uuid.uuid4().hex[:8]}",
                                     "amount": {"amount": "2.00", "currency": "USD"}})  # fmt: skip
        assert reply["ok"], reply
        text = await until(
            worker,
            lambda t: (
                (sample(t, "billing_outbox_unpublished_events") or 0) >= 1
                and (sample(t, "billing_outbox_lag_seconds") or 0) > 0
            ),
            "the unpublished row sampled",
        )
        lag = sample(text, "billing_outbox_lag_seconds")
        later = await until(worker, lambda t: sample(t, "billing_outbox_lag_seconds") != lag,
                            "the lag sampled again")  # fmt: skip
        assert (sample(later, "billing_outbox_lag_seconds") or 0) > (lag or 0)  # it grows
    finally:
        worker.publisher.start()
        worker.watchdog.start()
    await until(
        worker,
        lambda t: (
            sample(t, "billing_outbox_unpublished_events") == 0
            and sample(t, "billing_outbox_lag_seconds") == 0
        ),
        "the outbox published",
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once it is closed


async def test_a_failing_sample_keeps_the_last_values_logs_once_and_recovers(
    settings: Settings, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    down = create_engine(
        make_url(settings.database_dsn).set(port=closed_port()).render_as_string(False),
        pool_size=1,
    )
    broker: list[Any] = [None]  # no connection yet, as while the worker reconnects
    engine: list[Any] = [down]
    sampler = Sampler(metrics, Proxy(engine), lambda: broker[0],
                      [WITHDRAW, DLQ], stuck_after_seconds=900, interval_seconds=60)  # fmt: skip
    metrics.outbox_unpublished.set(7)
    metrics.queue_messages.labels(DLQ).set(3)
    caplog.set_level(logging.INFO, logger="billing_worker.sampler")
    try:
        for _ in range(3):
            await sampler.sample()

        assert gauge(metrics, "billing_metrics_sample_up", source="database") == 0
        assert gauge(metrics, "billing_metrics_sample_up", source="broker") == 0
        assert gauge(metrics, "billing_outbox_unpublished_events") == 7  # the last value
        assert gauge(metrics, "billing_queue_messages", queue=DLQ) == 3
        failures = [r.getMessage() for r in mine(caplog) if r.levelno == logging.WARNING]
        assert len(failures) == 2, failures  # one per source, not one per sample
        assert any("sampling the database failed" in f for f in failures)
        assert any("sampling the broker failed" in f for f in failures)

        engine[0] = worker.engine
        broker[0] = worker.broker._connection
        caplog.clear()
        await sampler.sample()

        assert gauge(metrics, "billing_metrics_sample_up", source="database") == 1
        assert gauge(metrics, "billing_metrics_sample_up", source="broker") == 1
        assert gauge(metrics, "billing_outbox_unpublished_events") == 0
        assert gauge(metrics, "billing_queue_consumers", queue=WITHDRAW) == 1
        recovered = [r.getMessage() for r in mine(caplog) if r.levelno == logging.INFO]
        assert sorted(recovered) == ["metrics: sampling the broker works again",
                                     "metrics: sampling the database works again"]  # fmt: skip
    finally:
        await down.dispose()


class Proxy:
    """An engine that can be swapped under the sampler (the one it was given is down)."""

    def __init__(self, current: list[Any]) -> None:
        self._current = current

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current[0], name)


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def mine(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The sampler's records (the worker beside it logs too)."""
    return [record for record in caplog.records if record.name == "billing_worker.sampler"]
