"""Every failure of every `billing-worker` command is one line on stderr and exit code 2,
naming what to fix: the real console script, against closed and taken ports, bad
settings and the URLs operators paste."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from support.services import (
    create_empty_database,
    database_exists,
    database_url_for,
    drop_database,
)

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("billing-worker")  # the installed console script
EVERY_COMMAND = [
    ["migrate"],
    ["run"],
    ["relay"],
    ["dlq", "list"],
    ["dlq", "show", "--position", "1"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "--yes"],
    ["outbox", "status"],
    ["audit"],
    ["demo"],
    ["status"],
]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    script = str(SCRIPT) if SCRIPT.exists() else shutil.which("billing-worker")
    assert script, "the billing-worker console script is not installed"
    quiet = {
        "BILLING_LOG_FORMAT": "json",
        "BILLING_LOG_LEVEL": "ERROR",
        # The relay binds its port before anything else: never the well-known 8080.
        "BILLING_RELAY_HOST": "127.0.0.1",
        "BILLING_RELAY_PORT": str(closed_port()),
    }
    return subprocess.run(  # noqa: S603 - our own console script
        [script, *args],
        env={**clean, **quiet, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",  # no .env file from the checkout
    )


def failure_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The one line a failure printed. `run` and `relay` are daemons whose JSON log lines
    also go to stderr; every other line must be that one line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if command in ("run", "relay"):
        lines = [line for line in lines if not _is_log_record(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"billing-worker {command}: "), lines[0]
    return lines[0]


def _is_log_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def closed_port() -> int:
    """A port nothing listens on: bound by us, then let go (never a guessed number)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port a listening socket of this test holds for the test's duration."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_with_rabbitmq_and_postgresql_unreachable_every_command_fails_in_one_line(
    args: list[str],
) -> None:
    db_port, broker_port = closed_port(), closed_port()
    result = cli(
        *args,
        BILLING_DATABASE_URL=f"postgresql+asyncpg://postgres:pw-x1@127.0.0.1:{db_port}/billing",
        BILLING_RABBITMQ_URL=f"amqp://guest:pw-x2@127.0.0.1:{broker_port}/",
    )
    line = failure_line(result, args[0])
    service, setting, port = (
        ("PostgreSQL", "BILLING_DATABASE_URL", db_port)
        if f"PostgreSQL at 127.0.0.1:{db_port}" in line
        else ("RabbitMQ", "BILLING_RABBITMQ_URL", broker_port)
    )
    assert f"cannot reach {service} at 127.0.0.1:{port}" in line
    assert setting in line
    assert "pw-x1" not in result.stderr
    assert "pw-x2" not in result.stderr


@pytest.mark.parametrize(
    "args", [["dlq", "list"], ["dlq", "purge", "--yes"], ["status"]], ids=" ".join
)
def test_an_unreachable_broker_with_a_good_database_names_the_broker(
    args: list[str], database_url: str
) -> None:
    port = closed_port()
    result = cli(
        *args,
        BILLING_DATABASE_URL=database_url,
        BILLING_RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{port}/",
    )
    line = failure_line(result, args[0])
    assert f"cannot reach RabbitMQ at 127.0.0.1:{port}/ (BILLING_RABBITMQ_URL)" in line


def test_the_demo_with_an_unreachable_broker_fails_in_one_line(database_url: str) -> None:
    port = closed_port()
    result = cli(
        "demo",
        BILLING_DATABASE_URL=database_url,
        BILLING_RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{port}/",
    )
    line = failure_line(result, "demo")
    assert f"cannot reach RabbitMQ at 127.0.0.1:{port}/" in line
    assert "BILLING_RABBITMQ_URL" in line


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_a_bad_setting_fails_every_command_in_one_line_naming_it(args: list[str]) -> None:
    result = cli(*args, BILLING_PREFETCH="lots")
    line = failure_line(result, args[0])
    assert "setting BILLING_PREFETCH is invalid" in line


@pytest.mark.parametrize("args", [["migrate"], ["run"], ["outbox", "status"], ["audit"],
                                  ["status"], ["demo"]], ids=" ".join)  # fmt: skip
def test_a_postgresql_url_without_the_asyncpg_driver_says_what_to_write(args: list[str]) -> None:
    result = cli(
        *args,
        BILLING_DATABASE_URL="postgresql://billing:s3cret@db.example:5432/billing?sslmode=require",
    )
    line = failure_line(result, args[0])
    assert "BILLING_DATABASE_URL" in line
    assert "write postgresql+asyncpg://billing:***@db.example:5432/billing?ssl=require" in line
    assert "s3cret" not in result.stderr


def test_another_driver_is_refused_with_the_url_to_write() -> None:
    result = cli("migrate", BILLING_DATABASE_URL="postgresql+psycopg://u@h:5432/d")
    line = failure_line(result, "migrate")
    assert "the psycopg driver" in line
    assert "write postgresql+asyncpg://u@h:5432/d instead" in line


def test_the_relay_on_a_taken_port_names_the_port_and_its_setting(taken_port: int) -> None:
    result = cli(
        "relay",
        BILLING_RELAY_HOST="127.0.0.1",
        BILLING_RELAY_PORT=str(taken_port),
        BILLING_RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
    )
    line = failure_line(result, "relay")
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line
    assert "BILLING_RELAY_PORT" in line
    assert "listening" not in result.stderr  # never claimed before the bind


@pytest.mark.parametrize(
    ("command", "advice"),
    [("run", None), ("demo", "billing-worker demo --no-worker")],  # demo: how to share one
)
def test_a_second_worker_on_the_same_metrics_port_names_the_port_and_its_setting(
    command: str, advice: str | None, taken_port: int, database_url: str, rabbitmq_url: str
) -> None:
    result = cli(
        command,
        BILLING_DATABASE_URL=database_url,
        BILLING_RABBITMQ_URL=rabbitmq_url,
        BILLING_METRICS_HOST="127.0.0.1",
        BILLING_METRICS_PORT=str(taken_port),
    )
    line = failure_line(result, command)
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line
    assert "BILLING_METRICS_PORT" in line
    if advice is not None:
        assert advice in line


def test_run_against_a_missing_database_leaves_no_database_behind(
    database_url: str, rabbitmq_url: str
) -> None:
    url = database_url_for(database_url, f"billing_test_typo_{uuid.uuid4().hex[:10]}")
    try:
        result = cli("run", BILLING_DATABASE_URL=url, BILLING_RABBITMQ_URL=rabbitmq_url)
        line = failure_line(result, "run")
        assert "does not exist" in line
        assert "billing-worker migrate" in line
        assert not asyncio.run(database_exists(url))
    finally:
        asyncio.run(drop_database(url))


@pytest.mark.parametrize("args", [["outbox", "status"], ["audit"], ["status"]], ids=" ".join)
def test_an_operator_command_against_a_missing_database_says_so(
    args: list[str], database_url: str, rabbitmq_url: str
) -> None:
    url = database_url_for(database_url, f"billing_test_typo_{uuid.uuid4().hex[:10]}")
    try:
        result = cli(*args, BILLING_DATABASE_URL=url, BILLING_RABBITMQ_URL=rabbitmq_url)
        line = failure_line(result, args[0])
        assert f"database 127.0.0.1:{make_url(url).port or 5432}/{make_url(url).database}" in line
        assert "does not exist" in line
        assert not asyncio.run(database_exists(url))
    finally:
        asyncio.run(drop_database(url))


@pytest.mark.parametrize("args", [["outbox", "status"], ["audit"], ["status"]], ids=" ".join)
def test_an_operator_command_against_an_unmigrated_database_says_to_migrate(
    args: list[str], database_url: str, rabbitmq_url: str
) -> None:
    url = database_url_for(database_url, f"billing_test_empty_{uuid.uuid4().hex[:10]}")
    asyncio.run(create_empty_database(url))
    try:
        result = cli(*args, BILLING_DATABASE_URL=url, BILLING_RABBITMQ_URL=rabbitmq_url)
        line = failure_line(result, args[0])
        assert "the database is not migrated" in line
        assert "run `billing-worker migrate`" in line
    finally:
        asyncio.run(drop_database(url))


def test_dlq_show_without_a_position_says_how_to_name_one() -> None:
    result = cli("dlq", "show")
    line = failure_line(result, "dlq")
    assert "--position" in line


@pytest.mark.parametrize(
    "args", [["dlq", "frob"], ["status", "--max-outbox-lag", "soon"], ["nonsense"], []],
    ids=" ".join,
)  # fmt: skip
def test_a_usage_error_is_one_line_too(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--help" in result.stderr


def test_version_prints_the_installed_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"billing-worker {metadata.version('billing-worker')}"


def test_traceback_shows_the_whole_story_instead_of_the_line() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/billing"
    quiet = cli("outbox", "status", BILLING_DATABASE_URL=url)
    loud = cli("--traceback", "outbox", "status", BILLING_DATABASE_URL=url)
    assert "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.returncode != 0
