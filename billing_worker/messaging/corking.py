"""Frames written to the broker in one turn of the event loop leave in one `send()`.

aiormq writes every frame (a publish, an ack) to its socket as soon as its writer task
takes it from the queue, so a batch of 32 replies and 32 acks costs 64 system calls and
64 TCP packets (asyncio sets TCP_NODELAY). Under load that was the worker's largest
single cost: a quarter of its CPU in `socket.send` (py-spy, drain benchmark).

`CorkedWriter` keeps what is written during one turn of the loop and sends it joined,
with a callback scheduled for the very next turn: no timer, so no latency is added
when the worker is idle — a lone reply leaves one turn later, as it would have anyway
once the writer task yields. Order is kept (one buffer, flushed in order), and
`drain()` / `close()` / `write_eof()` flush first, so aiormq's own flow control and
shutdown see every byte.

`CorkedTransportFactory` hands the writer to aiormq through its documented
`transport_factory` parameter; `FailoverConnection` passes it on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL


class CorkedWriter:
    """An `asyncio.StreamWriter` whose writes of one loop turn go out in one call."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.flushes = 0  # send calls made (for tests and curiosity)
        self.frames = 0  # writes asked for

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self.frames += 1

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self.flushes += 1
        self._writer.write(data)

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    def write_eof(self) -> None:
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, transport, wait_closed, ...
        return getattr(self._writer, name)


class CorkedTransportFactory(TransportFactory):
    """aiormq's TCP or TLS transport (by the URL's scheme), with a `CorkedWriter`."""

    def __init__(self) -> None:
        self._tcp = TCPTransportFactory()
        self._tls = TLSTransportFactory()

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        factory = self._tls if url.scheme == "amqps" else self._tcp
        reader, writer = await factory.create(url, **kwargs)
        return reader, CorkedWriter(writer)  # type: ignore[return-value]
