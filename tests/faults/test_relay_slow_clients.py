"""Slow clients against a real `billing-worker relay` process, over raw sockets.

A client that trickles its request head, or its body, or lingers on a keep-alive
connection, is cut off by the relay once its deadline passed (a bounded wait: deadline
plus a generous margin, never a claim about speed); genuine webhooks are answered
meanwhile, and beyond the connection cap the relay answers 503 instead of queueing
connections without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from faststream.rabbit import RabbitBroker

from billing_worker.messaging import topology
from billing_worker.messaging.topology import Topology
from billing_worker.relay.app import build_relay
from billing_worker.relay.runner import (
    health_probe,
    publisher,
    relay_broker,
    relay_config,
    uvicorn_config,
)
from fakes.server import free_port
from fakes.stripe_api import sign
from support.processes import Process, worker_env
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRET = "whsec_slow_clients"
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 60
MARGIN = 20.0  # bounded wait beyond a deadline, for a loaded machine
SLOW = 20  # of each kind
UNUSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/unused"  # the relay has none


@pytest.fixture
async def relay_port(vhost_url: str, tmp_path: Path) -> AsyncIterator[int]:
    admin = RabbitBroker(vhost_url)
    await admin.connect()
    settings = make_settings(UNUSED_DATABASE, vhost_url)
    await topology.declare(admin, Topology.from_settings(settings))
    await admin.stop()
    port = free_port()
    env = worker_env(
        UNUSED_DATABASE,
        vhost_url,
        stripe_webhook_secret=SECRET,
        relay_host="127.0.0.1",
        relay_port=port,
        relay_header_timeout_seconds=HEADER_TIMEOUT,
        relay_body_timeout_seconds=BODY_TIMEOUT,
        relay_max_connections=MAX_CONNECTIONS,
    )
    relay = Process("relay", env, tmp_path / "relay.log")
    try:
        relay.start()
        await relay.ready()
        yield port
        assert relay.alive, relay.text()[-3000:]
    finally:
        relay.ensure_dead()


async def genuine(port: int) -> httpx.Response:
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "x", "object": "event"}).encode()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        return await http.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)}
        )


class Slow:
    """One raw connection that sends `start`, then one byte of `trickle` every 0.3 s,
    and records everything the server answers until it closes the connection."""

    def __init__(self, start: bytes, trickle: bytes) -> None:
        self.start, self.trickle = start, trickle
        self.received = b""
        self.closed = asyncio.Event()
        self.opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def open(self, port: int) -> None:
        self._task = asyncio.create_task(self._run(port))

    async def _run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.opened.set()
        reading = asyncio.create_task(self._read(reader))
        try:
            writer.write(self.start)
            for byte in self.trickle:
                if reading.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)
            await reading
        except (ConnectionError, OSError):
            await reading
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self.received += chunk
        except (ConnectionError, OSError):
            pass
        self.closed.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await self._task


ENDLESS_HEADERS = b"".join(f"X-Slow-{n}: y\r\n".encode() for n in range(10_000))


def slow_head(path: str = "/webhooks/stripe") -> Slow:
    return Slow(f"POST {path} HTTP/1.1\r\nHost: relay\r\n".encode(), ENDLESS_HEADERS)


def slow_body(path: str) -> Slow:
    head = f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: 900000\r\n\r\n".encode()
    return Slow(head + b"{", b"x" * 900_000)


def lingering() -> Slow:
    """A genuine-looking request answered at once, then the next head trickled in."""
    first = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"
    return Slow(first + b"GET /healthz HTTP/1.1\r\n", ENDLESS_HEADERS)


async def all_closed(slow: list[Slow], deadline: float) -> list[int]:
    """Indexes of the connections the server has not closed within deadline + margin."""
    waits = [asyncio.wait_for(s.closed.wait(), deadline + MARGIN) for s in slow]
    results = await asyncio.gather(*waits, return_exceptions=True)
    return [n for n, result in enumerate(results) if isinstance(result, TimeoutError)]


async def test_slow_heads_bodies_and_lingering_clients_are_cut_off(relay_port: int) -> None:
    heads = [slow_head() for _ in range(SLOW)]
    bodies = [slow_body("/webhooks/stripe") for _ in range(SLOW // 2)]
    # Answered without reading the body (403: 127.0.0.1 is no YooKassa address); the
    # rest of the body still has to come within the deadline.
    early = [slow_body("/webhooks/yookassa") for _ in range(SLOW // 2)]
    lingerers = [lingering() for _ in range(4)]
    everyone = heads + bodies + early + lingerers
    try:
        for slow in everyone:
            slow.open(relay_port)
        await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in everyone)), 30)

        # Well below the cap: a genuine webhook is answered while they hang on.
        response = await genuine(relay_port)
        assert response.status_code == 200, response.text

        still_open = await all_closed(everyone, max(HEADER_TIMEOUT, BODY_TIMEOUT))
        assert not still_open, f"{len(still_open)} slow connections are still open"
    finally:
        await asyncio.gather(*(slow.stop() for slow in everyone))

    # The relay said why where it could: 408 to a body that did not arrive in time.
    assert all(s.received.startswith(b"HTTP/1.1 408 ") for s in bodies), bodies[0].received
    assert all(s.received.startswith(b"HTTP/1.1 403 ") for s in early), early[0].received
    assert all(s.received.startswith(b"HTTP/1.1 200 ") for s in lingerers)
    assert all(s.received == b"" for s in heads)  # no request, no answer: just closed
    assert (await genuine(relay_port)).status_code == 200


async def test_beyond_the_connection_cap_the_relay_answers_503_until_slow_clients_are_cut(
    relay_port: int,
) -> None:
    heads = [slow_head() for _ in range(MAX_CONNECTIONS)]
    try:
        for slow in heads:
            slow.open(relay_port)
        await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in heads)), 30)
        # The server counts a connection once it accepted it, which may be a moment after
        # our side saw it open: ask again, for a bounded while, until we are over the cap.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10
        while (response := await genuine(relay_port)).status_code == 200:
            assert loop.time() < give_up, "never refused beyond the connection cap"
            await asyncio.sleep(0.2)
        assert response.status_code == 503, response.text

        still_open = await all_closed(heads, HEADER_TIMEOUT)
        assert not still_open, f"{len(still_open)} slow connections are still open"
    finally:
        await asyncio.gather(*(slow.stop() for slow in heads))
    assert (await genuine(relay_port)).status_code == 200


async def test_cut_off_connections_leave_nothing_behind_in_the_server(vhost_url: str) -> None:
    """The same listener (`uvicorn_config`) served in-process, so its connection objects
    can be watched: once the slow clients are cut, every protocol object, with the body
    buffered so far, is gone."""
    admin = RabbitBroker(vhost_url)
    await admin.connect()
    settings = make_settings(
        UNUSED_DATABASE,
        vhost_url,
        stripe_webhook_secret=SECRET,
        relay_header_timeout_seconds=HEADER_TIMEOUT,
        relay_body_timeout_seconds=BODY_TIMEOUT,
    )
    await topology.declare(admin, Topology.from_settings(settings))
    await admin.stop()
    broker = relay_broker(settings)
    await broker.connect()
    app = build_relay(relay_config(settings), publisher(broker), health_probe(broker))
    server = uvicorn.Server(uvicorn_config(app, settings))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    slow = [slow_head() for _ in range(10)] + [slow_body("/webhooks/stripe") for _ in range(10)]
    try:
        await asyncio.wait_for(_started(server), 30)
        for client in slow:
            client.open(port)
        await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in slow)), 30)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 30
        while len(server.server_state.connections) < len(slow):
            assert loop.time() < give_up, "the server never saw the slow clients"
            await asyncio.sleep(0.05)
        held = [weakref.ref(protocol) for protocol in server.server_state.connections]
        assert (await genuine(port)).status_code == 200

        still_open = await all_closed(slow, max(HEADER_TIMEOUT, BODY_TIMEOUT))
        assert not still_open, f"{len(still_open)} slow connections are still open"
        give_up = loop.time() + MARGIN
        while server.server_state.connections or any(ref() is not None for ref in held):
            assert loop.time() < give_up, "cut-off connections are still held in memory"
            gc.collect()
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(client.stop() for client in slow))
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        await broker.stop()


async def _started(server: uvicorn.Server) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
