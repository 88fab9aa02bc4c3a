"""A real worker app against the run's database and vhost, and a client bus to drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.settings import Settings
from support.rpc import Bus
from support.settings import make_settings


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    return make_settings(database_url, rabbitmq_url)


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = build_worker(settings)
    async with worker.app:
        yield worker


@pytest.fixture
async def bus(worker: Worker, rabbitmq_url: str) -> AsyncIterator[Bus]:
    bus = Bus(rabbitmq_url)
    await bus.start()
    yield bus
    await bus.close()
