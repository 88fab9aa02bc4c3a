"""Session-wide services: a fresh database and a fresh RabbitMQ vhost per test run."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from support import services


@pytest.fixture(scope="session")
def run_name() -> str:
    return services.run_id()


@pytest.fixture(scope="session")
async def database_url(run_name: str) -> AsyncIterator[str]:
    from billing_worker.db.migrate import DatabaseUnavailable, migrate

    base = os.environ.get("BILLING_TEST_DATABASE_URL", services.DEFAULT_DATABASE_URL)
    url = services.database_url_for(base, f"billing_test_{run_name}")
    try:
        await migrate(url)
    except DatabaseUnavailable as down:
        pytest.skip(f"no PostgreSQL for integration tests: {down}")
    yield url
    await services.drop_database(url)


@pytest.fixture(scope="session")
def rabbitmq_url(run_name: str) -> Iterator[str]:
    base = os.environ.get("BILLING_TEST_RABBITMQ_URL", services.DEFAULT_RABBITMQ_URL)
    vhost = f"billing-test-{run_name}"
    url = services.create_vhost(base, vhost)
    if url is None:  # a remote or containerised broker: share its vhost
        yield base
        return
    yield url
    services.delete_vhost(vhost)
