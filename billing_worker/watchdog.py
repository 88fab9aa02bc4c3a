"""The watchdog: no part of the worker may stop silently.

Every `interval` seconds it probes each watched part - the outbox publisher, the
reconciler, the renewals job, the withdrawal coalescer's flusher, every queue's consumer.
A part found stopped is logged at ERROR, shown as down by `/healthz` (503, naming it)
and restarted. It counts as running again only once a later probe finds it so: a restart
is no proof. A part that needs more than `max_restarts` restarts within `window` seconds
is beyond repair in this process: the watchdog logs it at CRITICAL and asks the process
to exit non-zero (`give_up`), so that the orchestrator starts a fresh one.

A consumer is only restarted while its broker connection is open and after it stayed
missing for `consumer_grace` seconds: aio-pika restores consumers itself on reconnect,
and a broker outage is the broker check's to report, not a reason to exit. Within that
grace a missing consumer is a WARNING (and down in `/healthz`); past it, an ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aio_pika import RobustConnection

from billing_worker import background

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
EXIT_WATCHDOG = 70  # EX_SOFTWARE: the process exits with it when the watchdog gives up

Probe = Callable[[], Awaitable[str | None]]  # None: running; else why it is not


@dataclass
class Part:
    name: str
    probe: Probe
    restart: Callable[[], Awaitable[None]]
    # May it be restarted now? (a consumer: only while its broker connection is open)
    restartable: Callable[[], bool] = lambda: True
    grace_seconds: float = 0.0  # how long it may stay stopped before a restart
    # state
    down_since: float | None = field(default=None, repr=False)
    reason: str | None = field(default=None, repr=False)
    escalated: bool = field(default=False, repr=False)  # its ERROR line was logged
    restarts: deque[float] = field(default_factory=deque, repr=False)


class Watchdog:
    def __init__(
        self,
        parts: Sequence[Part] = (),
        *,
        interval: float = 2.0,
        max_restarts: int = 5,
        window: float = 300.0,
        give_up: Callable[[str], None] | None = None,
    ) -> None:
        self.parts = {part.name: part for part in parts}
        self.interval = interval
        self.max_restarts = max_restarts
        self.window = window
        self._give_up = give_up or (lambda _name: None)
        self.gave_up: str | None = None  # the part it gave up on
        self._task: asyncio.Task[None] | None = None

    def watch(self, part: Part) -> None:
        self.parts[part.name] = part

    def down(self) -> dict[str, str]:
        """The parts found stopped and not yet seen running again, with the reason."""
        return {name: part.reason or "stopped" for name, part in self.parts.items() if part.reason}

    def check(self, name: str) -> Callable[[], Awaitable[bool]]:
        """A `/healthz` check: is this part running, as far as the last probe saw?"""

        async def running() -> bool:
            return self.parts[name].reason is None

        return running

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        await background.stop(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # the watchdog itself must not die quietly either
                background.raise_if_cancelled()
                log.exception("the watchdog's round failed")

    async def check_once(self) -> None:
        for part in list(self.parts.values()):
            if self.gave_up is not None:
                return
            await self._check(part)

    async def _check(self, part: Part) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reason = await part.probe()
        except Exception as error:
            reason = f"its probe failed: {error!r}"
        now = time.monotonic()
        if reason is None:
            if part.reason is not None:
                log.info("%s is running again", part.name)
            part.down_since = part.reason = None
            return
        if part.reason is None:
            # A part with a grace period (a consumer, during a reconnect) may be back by
            # itself: that is a warning; staying stopped past the grace is an error.
            log.log(logging.WARNING if part.grace_seconds else logging.ERROR,
                    "%s has stopped: %s", part.name, reason)  # fmt: skip
            part.down_since = now
            part.escalated = not part.grace_seconds
        part.reason = reason
        assert part.down_since is not None
        if now - part.down_since < part.grace_seconds:
            return
        if not part.escalated:
            part.escalated = True
            log.error("%s has stayed stopped for %.0fs: %s", part.name, now - part.down_since,
                      reason)  # fmt: skip
        if not part.restartable():
            return
        if part.restarts and now - part.restarts[-1] < part.grace_seconds:
            return  # the last restart gets the same grace to take effect
        while part.restarts and now - part.restarts[0] > self.window:
            part.restarts.popleft()
        if len(part.restarts) >= self.max_restarts:
            self.gave_up = part.name
            log.critical(
                "%s stopped again after %d restarts within %.0fs (%s): exiting so that "
                "a fresh process takes over",
                part.name, len(part.restarts), self.window, reason,
            )  # fmt: skip
            self._give_up(part.name)
            return
        part.restarts.append(now)
        log.error("restarting %s (restart %d of at most %d within %.0fs)", part.name,
                  len(part.restarts), self.max_restarts, self.window)  # fmt: skip
        try:
            await part.restart()
        except Exception as error:
            log.error("restarting %s failed: %s", part.name, error)


def task_probe(task: Callable[[], asyncio.Task[Any] | None]) -> Probe:
    """A background task's probe: running unless it ended (how it ended is the reason)."""

    async def probe() -> str | None:
        current = task()
        if current is None:
            return "its task is not running"
        if not current.done():
            return None
        if current.cancelled():
            return "its task was cancelled"
        error = current.exception()
        if error is None:
            return "its task returned"
        return f"its task failed: {type(error).__name__}: {error}"

    return probe


def consumer_part(subscriber: Any, broker: Any, grace_seconds: float) -> Part:
    """A queue's consumer: its subscriber runs and the broker delivers to its consumer
    tag on an open channel. Restarted by aio-pika's own recovery of the connection's
    channels and consumers (started, if its subscriber never was)."""
    name = f"consumer {subscriber.queue.name}"

    async def probe() -> str | None:
        queue, tag = subscriber._queue_obj, subscriber._consumer_tag
        if not subscriber.running or queue is None or tag is None:
            return "its subscriber is not consuming"
        if queue.channel.is_closed:
            return "its channel is closed"
        underlay = await queue.channel.get_underlay_channel()
        if tag not in underlay.consumers:
            return "the broker no longer delivers to it"
        return None

    def connected() -> bool:
        connection = broker._connection
        return connection is not None and connection.connected.is_set()

    async def restart() -> None:
        connection = broker._connection
        if subscriber.running and isinstance(connection, RobustConnection):
            # aio-pika restores the consumers it knows of (channel, qos, queue, consumer
            # tag) in its connection's recovery task, one recovery at a time. Asking for a
            # recovery cannot race one already under way after a reconnect; stopping and
            # starting the subscriber from here did (its channel reopened under it, the
            # restore failed, the connection was dropped again, and so on).
            connection._request_recovery()
            return
        await subscriber.start()  # not started at all: nothing for aio-pika to restore

    return Part(name, probe, restart, restartable=connected, grace_seconds=grace_seconds)
