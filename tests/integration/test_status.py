"""`billing-worker status` against a real broker and database: a vhost and a database of
the test's own (the verdict judges the whole of both), a real worker declaring and
consuming its queues."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aio_pika
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from billing_contracts import names
from billing_worker.app import Worker, build_worker
from billing_worker.ops import health
from billing_worker.providers import sandbox
from billing_worker.settings import Settings
from support import services
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration

REPORT_KEYS = {
    "healthy", "problems", "queues", "dead_letter", "outbox", "stuck_payments",
    "unacked_source",
}  # fmt: skip
QUEUE_KEYS = {"queue", "messages", "consumers", "unacked"}


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url  # outbox and stuck payments are judged over the whole database


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    name = f"billing-status-{uuid.uuid4().hex[:10]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("needs a broker it can administer (rabbitmqctl)")
    yield url
    services.delete_vhost(name)


@pytest.fixture
def settings(database_url: str, vhost_url: str) -> Settings:
    return make_settings(database_url, vhost_url)


def status(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env = {**clean, "BILLING_DATABASE_URL": settings.database_dsn,
           "BILLING_RABBITMQ_URL": settings.amqp_url}  # fmt: skip
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "billing_worker", "status", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip


async def run_status(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(status, settings, *args)


async def dead_letter(url: str, body: bytes) -> None:
    """What the broker does with a rejected message: publish it to the dead-letter exchange
    (confirmed), then wait until the queue counts it."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.DEAD_LETTER_EXCHANGE)
        await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="x")
        while (await health.queue_states_on(connection, [names.DEAD_LETTER_QUEUE]))[
            0
        ].messages != 1:
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_the_status_command_watches_exactly_the_queues_the_worker_consumes(
    worker: Worker, settings: Settings
) -> None:
    assert sorted(route.queue for route in worker.routes) == sorted(health.command_queues(settings))


async def test_a_running_worker_on_a_quiet_deployment_is_healthy(
    worker: Worker, settings: Settings
) -> None:
    result = await run_status(settings)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("status: healthy")
    assert f"{names.DEAD_LETTER_QUEUE} " in result.stdout
    row = next(
        line for line in result.stdout.splitlines() if line.startswith("billing.wallet.deposit ")
    )
    ready, consumers = row.split()[1:3]
    assert ready == "0"
    assert int(consumers) >= 1


async def test_a_dead_letter_makes_status_fail_and_shows_the_depth(
    worker: Worker, settings: Settings
) -> None:
    await dead_letter(settings.amqp_url, b'{"poison": true}')

    human, as_json = await asyncio.gather(run_status(settings), run_status(settings, "--json"))

    assert human.returncode == 1, human.stdout + human.stderr
    dlq_row = next(
        line for line in human.stdout.splitlines() if line.startswith(names.DEAD_LETTER_QUEUE)
    )
    assert dlq_row.split()[1] == "1"
    assert f"{names.DEAD_LETTER_QUEUE} holds 1 dead letters" in human.stdout
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False
    assert report["dead_letter"]["messages"] == 1
    assert report["problems"] == [
        f"{names.DEAD_LETTER_QUEUE} holds 1 dead letters: see `billing-worker dlq list`"
    ]


async def test_json_has_a_row_per_queue_with_depth_consumers_and_unknown_unacked(
    worker: Worker, settings: Settings
) -> None:
    result = await run_status(settings, "--json", "--management-url", "none")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS
    assert [row["queue"] for row in report["queues"]] == health.command_queues(settings)
    for row in [*report["queues"], report["dead_letter"]]:
        assert set(row) == QUEUE_KEYS
        assert row["unacked"] is None
    assert all(row["consumers"] >= 1 and row["messages"] == 0 for row in report["queues"])
    assert report["dead_letter"] == {"queue": names.DEAD_LETTER_QUEUE, "messages": 0,
                                     "consumers": 0, "unacked": None}  # fmt: skip
    assert report["unacked_source"].startswith("unknown")
    assert report["outbox"] == {"unpublished": 0, "oldest_unpublished_age_s": None,
                                "max_lag_s": 60.0}  # fmt: skip
    assert report["stuck_payments"] == {
        "count": 0,
        "older_than_s": settings.reconcile_after_seconds + 2 * settings.reconcile_interval_seconds,
    }  # BILLING_RECONCILE_AFTER_SECONDS plus two reconciler rounds
    assert report["problems"] == []
    assert report["healthy"] is True


class _Management(BaseHTTPRequestHandler):
    """The one call `status` makes to RabbitMQ's management API (the plugin is not
    enabled on the test broker), answered from `rows`."""

    rows: list[dict[str, Any]] = []
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = json.dumps(self.rows).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def management() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Management)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_unacked_counts_come_from_the_management_api_when_it_answers(
    worker: Worker, settings: Settings, management: str
) -> None:
    _Management.rows = [{"name": "billing.wallet.deposit", "messages_unacknowledged": 3}]
    _Management.paths = []

    result = await run_status(settings, "--json", "--management-url", management)

    report = json.loads(result.stdout)
    vhost = settings.amqp_url.rsplit("/", 1)[1]
    assert _Management.paths == [f"/api/queues/{vhost}?columns=name,messages_unacknowledged"]
    unacked = {row["queue"]: row["unacked"] for row in report["queues"]}
    assert unacked["billing.wallet.deposit"] == 3
    assert unacked["billing.wallet.withdraw"] is None  # not in the API's answer
    assert report["unacked_source"] == f"the management API at {management}"


async def test_queues_without_a_worker_and_a_lagging_outbox_are_problems(
    settings: Settings,
) -> None:
    # A worker declared the topology and stopped: queues exist, nobody consumes.
    async with build_worker(settings).app:
        pass
    await _old_unpublished_event(settings.database_dsn, age_s=600)

    result = await run_status(settings, "--json", "--max-outbox-lag", "120")

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["outbox"]["unpublished"] == 1
    assert report["outbox"]["oldest_unpublished_age_s"] >= 600
    problems = report["problems"]
    assert any(problem.startswith("the outbox lags: 1 events unpublished") for problem in problems)
    assert any(
        f"{len(report['queues'])} queues have no consumer" in problem for problem in problems
    )


async def test_an_empty_vhost_reports_every_queue_missing(settings: Settings) -> None:
    result = await run_status(settings)

    assert result.returncode == 1
    assert f"{names.DEAD_LETTER_QUEUE} does not exist" in result.stdout
    assert "queues do not exist (no worker declared them)" in result.stdout


async def test_a_payment_processing_past_the_reconciler_is_stuck(settings: Settings) -> None:
    threshold = health.stuck_after_seconds(settings)
    # A deposit the customer never pays, made through a real worker, which then stops
    # (its reconciler would otherwise claim the backdated row and touch it).
    async with build_worker(settings).app:
        bus = Bus(settings.amqp_url, tap_dead_letters=False)
        await bus.start()
        try:
            reply = await bus.call(
                names.WALLET_DEPOSIT,
                {"idempotency_key": uuid.uuid4().hex, "user_id": f"stuck-{uuid.uuid4().hex[:8]}",
                 "provider": "sandbox", "payment_method_id": sandbox.PENDING_METHOD,
                 "amount": {"amount": "5.00", "currency": "USD"}},
            )  # fmt: skip
        finally:
            await bus.close()
    assert reply["data"]["transaction"]["status"] == "processing", reply
    async with _connect(settings.database_dsn) as db:
        assert await health.stuck_payments(db, threshold) == 0  # just touched
        await db.execute(
            "UPDATE transactions SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
            uuid.UUID(reply["data"]["transaction"]["id"]),
            threshold + 60,
        )

    result = await run_status(settings, "--json")

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["stuck_payments"] == {"count": 1, "older_than_s": threshold}
    assert any(problem.startswith("1 payments processing") for problem in report["problems"])


@asynccontextmanager
async def _connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    parsed = make_url(url)
    db = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip
    try:
        yield db
    finally:
        await db.close()


async def _old_unpublished_event(url: str, age_s: float) -> None:
    from billing_worker.db import outbox

    message = outbox.OutboxMessage(uuid.uuid4(), names.EVENTS_EXCHANGE, "test.status",
                                   "test.status", "{}", {})  # fmt: skip
    async with _connect(url) as db:
        await outbox.insert(db, [message])
        await db.execute(
            "UPDATE outbox SET created_at = clock_timestamp() - make_interval(secs => $2) "
            "WHERE event_id = $1",
            message.event_id,
            age_s,
        )


async def test_queue_states_reads_the_queues_after_a_missing_one(settings: Settings) -> None:
    # The broker closes the declares' channel at a missing queue's 404: the queues
    # after it are still read, each as it is (one declares channel otherwise).
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()  # publisher confirms: the message is queued
        full = await channel.declare_queue(f"states-full-{uuid.uuid4().hex[:8]}")
        empty = await channel.declare_queue(f"states-empty-{uuid.uuid4().hex[:8]}")
        try:
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=full.name)
            missing = f"states-missing-{uuid.uuid4().hex[:8]}"
            asked = [missing, full.name, missing, missing, empty.name]
            states = await health.queue_states(settings.amqp_url, asked)
        finally:
            await full.delete(if_unused=False, if_empty=False)
            await empty.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()

    assert [state.queue for state in states] == asked
    assert [(s.messages, s.consumers) for s in states] == [
        (None, None), (1, 0), (None, None), (None, None), (0, 0),
    ]  # fmt: skip
