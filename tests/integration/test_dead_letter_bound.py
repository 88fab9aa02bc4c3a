"""The dead-letter queue is bounded: on a new broker by its declaration, on a broker whose
DLQ an earlier version declared by the operator policy the worker's warning names; and
`billing-worker dlq list` warns when it is nearly full. Each test has a vhost of its own."""

from __future__ import annotations

import asyncio
import logging
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from billing_contracts import names
from billing_worker.app import build_worker
from billing_worker.ops.dlq import fullness_warning
from billing_worker.settings import Settings
from support import services
from support.settings import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    name = f"billing-dlq-{uuid.uuid4().hex[:10]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("needs a broker it can administer (rabbitmqctl)")
    yield url
    services.delete_vhost(name)  # its queues and policies with it


@pytest.fixture
async def channel(vhost_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(vhost_url)
    yield await connection.channel(publisher_confirms=True)
    await connection.close()


async def dead_letter(channel: aio_pika.abc.AbstractChannel, *bodies: str) -> None:
    exchange = await channel.get_exchange(names.DEAD_LETTER_EXCHANGE)
    for body in bodies:  # confirmed one by one, in order
        await exchange.publish(aio_pika.Message(body.encode()), routing_key="x")


async def held(channel: aio_pika.abc.AbstractChannel) -> list[str]:
    """The DLQ's messages in order; they go back to it when the channel closes."""
    queue = await channel.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
    found = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        found.append(message.body.decode())
    return found


async def depth(url: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


def bounded(database_url: str, url: str, **extra: object) -> Settings:
    return make_settings(database_url, url, dead_letter_max=3, **extra)


def dlq_list(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        "BILLING_DATABASE_URL": settings.database_dsn,
        "BILLING_RABBITMQ_URL": settings.amqp_url,
        "BILLING_DEAD_LETTER_MAX": str(settings.dead_letter_max),
        "PATH": "/usr/bin:/bin",
    }
    command = [sys.executable, "-m", "billing_worker", "dlq", "list"]
    return subprocess.run(  # noqa: S603 - our own CLI
        command, env=env, capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
async def test_a_new_dlq_keeps_the_newest_dead_letters_up_to_its_bound(
    database_url: str, vhost_url: str, quorum: bool
) -> None:
    settings = bounded(database_url, vhost_url, quorum_queues=quorum)
    async with build_worker(settings).app:
        connection = await aio_pika.connect(vhost_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await dead_letter(channel, "1", "2", "3", "4", "5")  # never refused: drop-head

            assert await held(channel) == ["3", "4", "5"]
        finally:
            await connection.close()
    listed = await asyncio.to_thread(dlq_list, settings)
    assert listed.returncode == 0, listed.stderr
    assert "holds 3 dead letters, 100% of BILLING_DEAD_LETTER_MAX=3" in listed.stderr
    roomy = await asyncio.to_thread(dlq_list, settings.model_copy(update={"dead_letter_max": 4}))
    assert "warning" not in roomy.stderr  # 3 of 4 is under 80 %


async def test_a_worker_starts_on_the_previous_versions_dlq_and_the_named_policy_bounds_it(
    database_url: str, vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = await aio_pika.connect(vhost_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        # As the previous version declared it: durable, classic, without a bound.
        old = await channel.declare_queue(
            names.DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "classic"}
        )
        dlx = await channel.declare_exchange(
            names.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await old.bind(dlx, "#")
        await dead_letter(channel, "old-1", "old-2")

        caplog.set_level(logging.WARNING, logger="billing_worker.messaging.topology")
        async with build_worker(bounded(database_url, vhost_url)).app:  # no 406 at start-up
            await channel.default_exchange.publish(
                aio_pika.Message(b"not json"), routing_key=names.WALLET_BALANCE
            )
            for _ in range(100):  # a bounded wait for the worker to dead-letter it
                if await depth(vhost_url) == 3:
                    break
                await asyncio.sleep(0.1)
            assert await depth(vhost_url) == 3  # the old ones kept, the new one added

        [warning] = [r.getMessage() for r in caplog.records if "set_operator_policy" in r.message]
        assert "inequivalent arg 'x-max-length'" in warning
        command = warning.split("Bound it once with: ")[1]
        applied = await asyncio.to_thread(  # the command the warning tells operators to run
            subprocess.run, shlex.split(command), capture_output=True, text=True, timeout=60
        )
        assert applied.returncode == 0, applied.stderr

        await dead_letter(channel, "new-1", "new-2")
        assert await held(channel) == ["not json", "new-1", "new-2"]
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("count", "warned"), [(0, False), (79, False), (80, True), (100, True), (250, True)]
)
def test_dlq_list_warns_from_80_percent_of_the_bound(count: int, warned: bool) -> None:
    assert (fullness_warning(count, 100) is not None) is warned
