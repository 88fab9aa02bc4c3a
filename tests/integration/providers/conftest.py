"""A worker wired to HTTP fakes of Stripe and YooKassa, and the relay in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.relay.runner import relay_broker
from billing_worker.settings import Settings
from fakes.server import serve
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.relay import Relay
from support.settings import provider_settings


@pytest.fixture
def stripe_fake() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    with serve(fake.app) as base:
        yield fake, base


@pytest.fixture
def yookassa_fake() -> Iterator[tuple[FakeYooKassa, str]]:
    fake = FakeYooKassa()
    with serve(fake.app) as base:
        yield fake, base


@pytest.fixture
def settings(
    database_url: str,
    rabbitmq_url: str,
    stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Settings:
    return provider_settings(database_url, rabbitmq_url, stripe_fake[1], yookassa_fake[1])


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = build_worker(settings)
    async with worker.app:
        yield worker


@pytest.fixture
async def relay(settings: Settings, worker: Worker) -> AsyncIterator[Relay]:
    broker = relay_broker(settings)
    await broker.connect()
    yield Relay(settings, broker)
    await broker.stop()
