"""One broker connection over several addresses: the nodes of a RabbitMQ cluster.

aio-pika's `RobustConnection` reconnects by itself, but always to the URL it was made
with; with that node down it would wait for it to come back. `FailoverConnection` moves
on to the next address after every failed attempt and every lost connection (round
robin), so a worker or relay whose node stops carries on through a surviving one:

- at start-up the addresses are tried in the order given; only when every one of them
  has failed once does start-up fail (fail-fast, as with one address);
- once connected, a lost connection is retried on the next address at once, then every
  `reconnect_interval` seconds on the one after, and so on, until one answers; channels,
  the topology declared through them and consumers are then restored as usual.

The hook is `_on_connection_close`: aio-pika calls it when an established connection is
lost *and* when an attempt to connect fails (`UnderlayConnection.connect`), before it
retries with `self.url`. `FailoverBroker` hands the class to `aio_pika.connect_robust`
through its documented `connection_class` parameter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection, TimeoutType
from aiormq.connection import parse_bool
from faststream.rabbit import RabbitBroker
from yarl import URL

log = logging.getLogger(__name__)


def redacted(url: URL) -> str:
    """For logs: no password, no query (aio-pika adds its own parameters there)."""
    return str((url.with_password("******") if url.password else url).with_query(None))


class BrokersUnreachable(ConnectionError):
    """Every address failed once at start-up; `failures` says why, address by address."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = tuple(failures)
        super().__init__(
            "; ".join(f"{where}: {reason_of(error)}" for where, error in self.failures)
        )


def reason_of(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


class FailoverConnection(RobustConnection):
    """A `RobustConnection` that rotates through `urls` (see the module docstring)."""

    def __init__(
        self,
        url: URL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        urls: Sequence[str | URL] = (),
        **kwargs: Any,
    ) -> None:
        # Fail-fast is ours to judge (after a whole round of addresses), not aio-pika's
        # (after the first failed attempt).
        self.fail_fast_round = parse_bool(kwargs.pop("fail_fast", True))
        super().__init__(url, loop=loop, fail_fast=False, **kwargs)
        # The first address is the one connect_robust built (with its query parameters).
        self.urls: tuple[URL, ...] = (self.url, *(URL(str(u)) for u in urls[1:]))
        self.position = 0
        self.failovers = 0  # times a connection moved on to another address
        self._failures: list[tuple[str, BaseException]] = []
        self._gave_up: asyncio.Future[None] | None = None

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        lost = self.url
        await super()._on_connection_close(closing)
        if self._close_called or self.is_closed:
            return
        failure = None if closing.cancelled() else closing.exception()
        if self.connection_attempt == 0 and failure is not None:  # never connected yet
            self._failures.append((redacted(lost), failure))
            if len(self._failures) >= len(self.urls) and self._gave_up is not None:
                if not self._gave_up.done():
                    self._gave_up.set_exception(BrokersUnreachable(self._failures))
                return
        if len(self.urls) > 1:
            self.position = (self.position + 1) % len(self.urls)
            self.url = self.urls[self.position]
            self.failovers += 1
            log.warning(
                "RabbitMQ at %s %s (%s); trying %s next",
                redacted(lost),
                "unreachable" if self.connection_attempt == 0 else "lost",
                reason_of(failure) if failure is not None else "closed",
                redacted(self.url),
            )

    async def connect(self, timeout: TimeoutType = None) -> None:  # noqa: ASYNC109 - aio-pika's
        try:
            await self._connect(timeout)
        except asyncio.CancelledError:
            # aio-pika's reconnect task swallows a cancellation ("Connection attempt ...
            # cancelled. Reconnecting") until close() is called: a SIGTERM during the first
            # attempt would leave it retrying every second, and the process running, for
            # ever. Closing stops it.
            await self.close()
            raise

    async def _connect(self, timeout: TimeoutType) -> None:  # noqa: ASYNC109 - passed on
        if not self.fail_fast_round or self.connection_attempt > 0:
            await super().connect(timeout)
            return
        self._gave_up = self.loop.create_future()
        connecting = asyncio.ensure_future(super().connect(timeout))
        try:
            await asyncio.wait({connecting, self._gave_up}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            connecting.cancel()
            raise
        if connecting.done():
            self._gave_up.cancel()
            connecting.result()
            return
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await self.close()
        failures = self._gave_up.exception()
        assert isinstance(failures, BrokersUnreachable)
        if len(failures.failures) == 1:  # one address: its own error, as aio-pika raises it
            raise failures.failures[0][1]
        raise failures

    def __str__(self) -> str:
        # aio-pika names the connection in its own log lines, some of them written after
        # we moved on to the next address: name the whole set, the node is in ours.
        if len(self.urls) == 1:
            return super().__str__()
        return " | ".join(redacted(url) for url in self.urls)

    @property
    def current(self) -> str:
        """The address in use (or being tried), without its password."""
        return redacted(self.url)


class FailoverBroker(RabbitBroker):
    """A FastStream `RabbitBroker` whose connection fails over between `urls`."""

    def __init__(self, urls: Sequence[str], **options: Any) -> None:
        if not urls:
            raise ValueError("FailoverBroker needs at least one URL")
        super().__init__(urls[0], **options)
        self.urls = tuple(urls)
        # FastStream passes these keyword arguments to aio_pika.connect_robust as they are;
        # `connection_class` is connect_robust's parameter for the connection's type.
        # connect_broker checks that the connection it got is indeed a FailoverConnection.
        factory: type[AbstractRobustConnection] = partial(  # type: ignore[assignment]
            FailoverConnection, urls=self.urls
        )
        self._connection_kwargs["connection_class"] = factory
