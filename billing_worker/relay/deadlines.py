"""A request-head deadline for uvicorn, which has none of its own.

uvicorn closes an idle kept-alive connection after `timeout_keep_alive`, but the first
byte of data cancels that timer: a client that trickles a request head (or keeps sending
the rest of a body the app has already answered) holds its connection and buffers for
as long as it likes. `head_deadline_protocol(seconds)` is uvicorn's own h11 protocol
with one timer more: armed when the connection is made and again whenever a response is
complete, disarmed when a complete request head has arrived; if it fires, the connection
is closed. The body of a request being handled has its own deadline in the app.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(H11Protocol):
    head_timeout: float = 10.0

    _head_timer: asyncio.TimerHandle | None = None
    _timed_cycle: RequestResponseCycle | None = None  # the last request whose head came

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self._head_arrived():
            self._arm()  # for the next head, or the rest of a body nobody reads

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_arrived(self) -> bool:
        """Disarm if a request head arrived since the timer was armed (or we are closing)."""
        if self.transport.is_closing():
            self._disarm()
            return True
        if self.cycle is not None and self.cycle is not self._timed_cycle:
            self._timed_cycle = self.cycle
            if not self.cycle.response_complete:
                self._disarm()
                return True
        return False

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request head in time")
            self.transport.close()


def head_deadline_protocol(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class to pass as `uvicorn.Config(http=...)`."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": seconds})
