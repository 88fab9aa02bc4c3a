"""The console script as an operator meets it: help, migrate, and one-line start-up failures."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import Process, worker_env

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "billing_worker"]


def run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return subprocess.run(  # noqa: S603 - our own CLI
        [*CLI, *args],
        env={**clean, "BILLING_LOG_FORMAT": "text", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",  # no .env file from the checkout
    )


@pytest.mark.parametrize("command", [[], ["migrate"], ["run"], ["relay"]])
def test_help_describes_every_command(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "usage: billing-worker" in result.stdout


def test_migrate_creates_the_missing_database_and_is_safe_to_run_twice(
    database_url: str, run_name: str
) -> None:
    from support.services import database_url_for

    url = database_url_for(database_url, f"billing_test_cli_{run_name}")
    try:
        first = run("migrate", BILLING_DATABASE_URL=url)
        second = run("migrate", BILLING_DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        assert "creating database" in first.stderr
        assert second.returncode == 0, second.stderr
        assert "creating database" not in second.stderr
    finally:
        import asyncio

        from support.services import drop_database

        asyncio.run(drop_database(url))


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_an_unreachable_database_stops_start_up_with_a_one_line_reason() -> None:
    result = run("run", BILLING_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/billing")
    line = one_line_failure(result)
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in line


def test_an_unreachable_broker_stops_start_up_with_a_one_line_reason(database_url: str) -> None:
    result = run(
        "run",
        BILLING_DATABASE_URL=database_url,
        BILLING_RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/",
    )
    line = one_line_failure(result)
    assert "cannot reach RabbitMQ at 127.0.0.1:1/" in line


def test_an_unmigrated_database_stops_start_up_and_says_to_migrate(
    database_url: str, run_name: str, rabbitmq_url: str
) -> None:
    from support.services import database_url_for

    url = database_url_for(database_url, f"billing_test_empty_{run_name}")
    try:
        result = run("run", BILLING_DATABASE_URL=url, BILLING_RABBITMQ_URL=rabbitmq_url)
        line = one_line_failure(result)
        assert "billing-worker migrate" in line
    finally:
        import asyncio

        from support.services import drop_database

        asyncio.run(drop_database(url))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BILLING_PREFETCH", "lots"),
        ("BILLING_MAX_DELIVERIES", "0"),
        ("BILLING_RETRY_DELAYS_MS", "x"),
    ],
)
def test_a_wrong_setting_stops_start_up_naming_the_setting(name: str, value: str) -> None:
    result = run("run", **{name: value})
    assert result.returncode == 2
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_the_sandbox_next_to_live_keys_stops_start_up_in_one_line() -> None:
    result = run("run", BILLING_SANDBOX_ENABLED="true", BILLING_STRIPE_API_KEY="sk_live_not_really")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "billing-worker run: BILLING_SANDBOX_ENABLED=true is refused with live provider keys "
        "(BILLING_STRIPE_API_KEY is a live key)"
    ]
    assert "sk_live_not_really" not in result.stderr


def test_secrets_are_not_printed_in_start_up_failures() -> None:
    result = run(
        "run",
        BILLING_DATABASE_URL="postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:1/billing",
    )
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_the_relay_with_an_unreachable_broker_stops_with_a_one_line_reason() -> None:
    result = run("relay", BILLING_RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/")
    line = one_line_failure(result)
    assert "cannot reach RabbitMQ at 127.0.0.1:1/" in line


def test_the_relay_process_serves_healthz_and_stops_on_sigterm(rabbitmq_url: str) -> None:
    import signal
    import time
    import urllib.request

    from fakes.server import free_port

    port = free_port()
    asyncio.run(declare_callbacks_exchange(rabbitmq_url))  # as a worker's start-up does
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env = {**clean, "BILLING_RABBITMQ_URL": rabbitmq_url, "BILLING_RELAY_HOST": "127.0.0.1",
           "BILLING_RELAY_PORT": str(port), "BILLING_LOG_FORMAT": "json"}  # fmt: skip
    process = subprocess.Popen(  # noqa: S603
        [*CLI, "relay"], env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    assert reply.status == 200
                    assert b'"up"' in reply.read()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "relay did not come up"
                time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "webhook relay listening" in stderr


async def test_the_worker_process_starts_serves_and_stops_cleanly_on_sigterm(
    database_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    worker = Process("run", worker_env(database_url, rabbitmq_url), tmp_path / "worker.log")
    worker.start()
    try:
        await worker.ready()  # "billing worker consuming", however long start-up takes here
        assert await worker.stop(timeout=60) == 0, worker.text()
    finally:
        worker.ensure_dead()
    assert "billing worker stopped" in worker.text()


async def test_sigterm_while_the_broker_has_not_answered_yet_stops_the_worker(
    database_url: str, tmp_path: Path
) -> None:
    """A broker that accepts the TCP connection and says nothing (a node under load,
    half up): SIGTERM during that first attempt. The worker used to log "shut down
    gracefully" and then run on forever, aio-pika's reconnect task swallowing the
    cancellation and trying again every second."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        silent = f"amqp://guest:guest@127.0.0.1:{port}/"
        worker = Process("run", worker_env(database_url, silent), tmp_path / "worker.log")
        worker.start()
        try:
            listener.settimeout(60)
            held, _ = await asyncio.to_thread(listener.accept)  # the worker now waits
            with held:
                returncode = await worker.stop(timeout=30)
        finally:
            worker.ensure_dead()
    assert "Reconnecting" not in worker.text(), worker.text()
    assert returncode == 0, worker.text()  # stopped as asked, not failed


async def declare_callbacks_exchange(rabbitmq_url: str) -> None:
    """The exchange the relay publishes to; the worker declares it, the relay never does
    (its broker user may have no configure permission), so the relay is healthy only
    once it exists."""
    import aio_pika

    from billing_contracts import names

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(
            names.PROVIDER_CALLBACKS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
