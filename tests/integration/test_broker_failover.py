"""Several broker addresses against the machine's one RabbitMQ node: the order at
start-up, the one-line reason when none answers, and moving on to the next address when
a connection is lost. (A real cluster: tests/faults/test_cluster.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from billing_worker.app import build_worker
from billing_worker.messaging.connection import FailoverConnection
from billing_worker.settings import Settings
from billing_worker.startup import StartupError, cluster_broker, connect_broker
from support import services
from support.settings import make_settings

pytestmark = pytest.mark.integration

DEAD = "amqp://guest:guest@127.0.0.1:1/"


def moved(url: str, host: str | None = None, port: int | None = None) -> str:
    """`url` with another host or port (same user, password and vhost)."""
    parts = urlsplit(url)
    netloc = (
        f"{parts.username}:{parts.password}@{host or parts.hostname}:{port or parts.port or 5672}"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def settings_for(*urls: str) -> Settings:
    return Settings(_env_file=None, rabbitmq_url=",".join(urls))  # type: ignore[call-arg]


async def test_start_up_tries_the_addresses_in_order(rabbitmq_url: str) -> None:
    settings = settings_for(moved(rabbitmq_url, port=1), rabbitmq_url)
    broker = cluster_broker(settings)
    try:
        await connect_broker(broker, settings)
        connection = await broker.connect()
        assert isinstance(connection, FailoverConnection)
        assert connection.current == moved(rabbitmq_url).replace(
            f":{urlsplit(rabbitmq_url).password}@", ":******@"
        )
        assert connection.failovers == 1
        assert await broker.ping(timeout=5)
    finally:
        await broker.stop()


async def test_start_up_fails_with_one_line_naming_every_address() -> None:
    settings = settings_for(DEAD, "amqp://guest:guest@127.0.0.1:2/")
    broker = cluster_broker(settings)
    with pytest.raises(StartupError) as refused:
        await connect_broker(broker, settings)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("cannot reach RabbitMQ at any of its addresses: 127.0.0.1:1/: ")
    assert "; 127.0.0.1:2/: " in message


async def test_a_lost_connection_moves_on_to_the_next_address(rabbitmq_url: str) -> None:
    """Two addresses of the same node (127.0.0.1 and localhost): every connection of the
    test's vhost is closed by the broker, and the broker comes back on the other one."""
    settings = settings_for(rabbitmq_url, moved(rabbitmq_url, host="localhost"))
    broker = cluster_broker(settings)
    try:
        await connect_broker(broker, settings)
        connection = await broker.connect()
        assert isinstance(connection, FailoverConnection)
        assert "127.0.0.1" in connection.current
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        vhost = unquote(urlsplit(rabbitmq_url).path[1:]) or "/"
        closed = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "failover test"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        await asyncio.wait_for(reconnected.wait(), 30)
        print(f"\nreconnected on the next address after {time.monotonic() - closed:.2f} s")
        assert "localhost" in connection.current
        assert connection.failovers == 1
        assert await broker.ping(timeout=5)
    finally:
        await broker.stop()


async def test_a_quorum_queue_with_another_delivery_limit_stops_start_up_with_one_line(
    database_url: str, rabbitmq_url: str
) -> None:
    """Changing BILLING_MAX_DELIVERIES changes x-delivery-limit, which RabbitMQ refuses
    to redeclare: start-up stops with the reason, not a traceback (README)."""
    name = f"billing-limit-{uuid.uuid4().hex[:8]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("needs a broker this machine can administer (rabbitmqctl)")
    try:
        first = build_worker(make_settings(database_url, url, quorum_queues=True, max_deliveries=3))
        async with first.app:
            pass
        second = build_worker(
            make_settings(database_url, url, quorum_queues=True, max_deliveries=4)
        )
        with pytest.raises(StartupError) as refused:
            async with second.app:
                pass
        message = str(refused.value)
        assert "\n" not in message
        assert "inequivalent arg 'x-delivery-limit'" in message
        assert message.startswith("RabbitMQ refused the worker's topology")
        # ...and leaves nothing running: a broker connection left open would reconnect
        # for ever once the vhost is gone (and its task ignores being cancelled then).
        assert second.broker._connection is None
        assert second.engine.pool.checkedout() == 0
    finally:
        services.delete_vhost(name)
