"""Session-wide services: a fresh database and a fresh RabbitMQ vhost per test run.

The URLs come from BILLING_TEST_DATABASE_URL / BILLING_TEST_RABBITMQ_URL, defaulting to
the local services on 127.0.0.1. Where those are unreachable and a Docker engine is,
testcontainers starts throwaway ones.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from support import containers, services

# The fault suite's figures, reported by the controller even when xdist runs the tests.
pytest_plugins = ["support.figures"]


def reachable(host: str | None, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host or "127.0.0.1", port), 3):
        return True
    return False


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; in CI a missing service is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def run_name() -> str:
    return services.run_id()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    base = os.environ.get("BILLING_TEST_DATABASE_URL", services.DEFAULT_DATABASE_URL)
    parsed = make_url(base)
    if reachable(parsed.host, parsed.port or 5432) or not containers.docker_available():
        yield base
        return
    with containers.postgres() as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(run_name: str, postgres_server: str) -> AsyncIterator[str]:
    from billing_worker.db.migrate import DatabaseUnavailable, migrate

    url = services.database_url_for(postgres_server, f"billing_test_{run_name}")
    try:
        await migrate(url)
    except DatabaseUnavailable as down:
        unavailable(f"no PostgreSQL for integration tests: {down}")
    yield url
    await services.drop_database(url)


@pytest.fixture(scope="session")
async def template_database_url(run_name: str, postgres_server: str) -> AsyncIterator[str]:
    """A migrated database nobody connects to, copied for tests that need a clean slate."""
    from billing_worker.db.migrate import DatabaseUnavailable, migrate

    url = services.database_url_for(postgres_server, f"billing_test_{run_name}_template")
    try:
        await migrate(url)
    except DatabaseUnavailable as down:
        unavailable(f"no PostgreSQL for integration tests: {down}")
    yield url
    await services.drop_database(url)


@pytest.fixture
async def fresh_database_url(template_database_url: str) -> AsyncIterator[str]:
    """A database of its own for one test (schedulers see every due row of a database)."""
    url = await services.copy_database(template_database_url, f"billing_test_{services.run_id()}")
    yield url
    await services.drop_database(url)


@pytest.fixture(scope="session")
def rabbitmq_url(run_name: str) -> Iterator[str]:
    base = os.environ.get("BILLING_TEST_RABBITMQ_URL", services.DEFAULT_RABBITMQ_URL)
    parsed = urlsplit(base)
    if not reachable(parsed.hostname, parsed.port or 5672):
        if not containers.docker_available():
            unavailable(f"no RabbitMQ for integration tests at {parsed.hostname}:{parsed.port}")
        with containers.rabbitmq() as url:
            yield url
        return
    vhost = f"billing-test-{run_name}"
    url = services.create_vhost(base, vhost)
    if url is None:  # a remote broker we cannot administer: share its vhost
        yield base
        return
    yield url
    services.delete_vhost(vhost)
