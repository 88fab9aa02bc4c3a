"""Fault suite: every test gets its own database and its own RabbitMQ vhost.

Its own vhost keeps one test's stragglers (a retry copy coming back from a delay queue, a
dead letter, a redelivered callback) out of the next test's database. At the end of the
run the figures gathered by the tests are printed and written to
`tests/faults/last-run.json` (`support.figures`, a plugin of the root conftest).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from support import services


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Invariants are judged on the test's own data only."""
    return fresh_database_url


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    name = f"billing-faults-{uuid.uuid4().hex[:10]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("the fault suite needs a broker it can administer (API or rabbitmqctl)")
    yield url
    services.delete_vhost(name)
