"""Sends committed outbox rows to RabbitMQ with publisher confirms, then marks them sent.

Inline first: the rows a commit wrote are handed over right after it (`committed`) and
published at once, their confirms awaited together; the confirmed ones are marked sent
by the publishing loop, one `UPDATE` for everything confirmed since its last round. A
row is published by either the inline path or this replica's poll, never both: each
leaves alone the rows the other holds (in memory, on the one event loop).

The poll is the safety net (rows left behind by a crash, a broker outage, a refused
publish, another replica that died): every `poll_interval` it takes the unpublished rows
older than `grace` seconds (the poll interval, at least MIN_GRACE) — younger ones are
most likely being published inline by the replica that wrote them. Delivery is at
least once: a crash between the confirm and the mark sends the row again with the
same `message_id`, which is how consumers dedupe.

Without inline publishing (`inline=False`), a commit wakes the poll instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker import background
from billing_worker.db import outbox
from billing_worker.db.engine import driver_connection
from billing_worker.metrics import Metrics

log = logging.getLogger(__name__)

# The least age of a row the poll takes (another replica may still be publishing it
# inline: its commit, hand-over and confirms take milliseconds, on a loaded machine more).
MIN_GRACE = 3.0

Send = Callable[[outbox.OutboxMessage], Awaitable[object]]


class OutboxPublisher:
    def __init__(
        self,
        engine: AsyncEngine,
        send: Send,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        metrics: Metrics | None = None,
        inline: bool = True,
        grace: float | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._engine = engine
        self._send = send
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self._inline = inline
        self._grace = max(poll_interval, MIN_GRACE) if grace is None else grace
        self._in_flight: set[UUID] = set()  # published inline, not marked yet
        self._polling: set[UUID] = set()  # taken by the poll, not marked yet
        self._confirmed: list[UUID] = []  # published inline, to mark in the next round
        self._publishing: set[asyncio.Task[None]] = set()
        self._poll_now = True

    def notify(self, events: int = 1) -> None:
        """Called after a commit that wrote `events` rows: poll now."""
        if events:
            self._poll_now = True
            self._wake.set()

    def committed(self, messages: Sequence[outbox.OutboxMessage]) -> None:
        """The rows a commit just wrote: published now (inline), or polled for."""
        if not messages:
            return
        if not self._inline or self._task is None:  # not running: the poll catches up
            self.notify(len(messages))
            return
        # Rows this replica's poll took between the commit and now are the poll's.
        messages = [m for m in messages if m.event_id not in self._polling]
        if not messages:
            return
        self._in_flight.update(message.event_id for message in messages)
        task = asyncio.create_task(self._publish_inline(list(messages)), name="outbox-inline")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_inline(self, messages: list[outbox.OutboxMessage]) -> None:
        results = await asyncio.gather(
            *(self._send(message) for message in messages), return_exceptions=True
        )
        failed = []
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(result)
                self._in_flight.discard(message.event_id)  # the poll's from now on
            else:
                self._confirmed.append(message.event_id)
        self.published += len(messages) - len(failed)
        self._metrics.events_published.inc(len(messages) - len(failed))
        if failed:
            log.warning(
                "%d of %d events not confirmed, left to the outbox poll: %s",
                len(failed), len(messages), failed[0],
            )  # fmt: skip
            self._poll_now = True
        self._wake.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox-publisher")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The publishing loop (the watchdog restarts it should it ever end)."""
        return self._task

    async def stop(self) -> None:
        """Stop polling after one last drain (graceful shutdown flushes the outbox)."""
        if self._task is None:
            return
        task, self._task = self._task, None
        await background.stop(task)  # a loop that had died was the watchdog's to report
        if self._publishing:  # inline publishes finish (or fail: the drain below takes them)
            await asyncio.wait(list(self._publishing))
        with contextlib.suppress(Exception):
            await self.mark_confirmed()
        with contextlib.suppress(Exception):
            await self.drain(grace=0.0)

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            self._wake.clear()
            try:
                await self.mark_confirmed()
                if self._poll_now or loop.time() >= next_poll:
                    self._poll_now = False
                    await self.drain()
                    await self._measure_lag()
                    next_poll = loop.time() + self._poll_interval
                failures = 0
            except Exception as error:  # the broker or the database is away: back off
                background.raise_if_cancelled()
                failures += 1
                delay = min(self._poll_interval * 2**failures, 30.0)
                log.warning("outbox publishing failed (%s); retrying in %.1fs", error, delay)
                self._poll_now = True
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - loop.time())):
                    await self._wake.wait()

    async def mark_confirmed(self) -> int:
        """Mark every row confirmed inline since the last round as sent: one statement."""
        if not self._confirmed:
            return 0
        ids, self._confirmed = self._confirmed, []
        try:
            async with driver_connection(self._engine) as db:
                await outbox.mark_published_events(db, ids)
        except BaseException:
            self._confirmed[:0] = ids  # marked in a later round (or sent again: at least once)
            raise
        self._in_flight.difference_update(ids)
        return len(ids)

    async def _measure_lag(self) -> None:
        async with driver_connection(self._engine) as db:
            self._metrics.outbox_lag.set(await outbox.lag_seconds(db))

    async def drain(self, grace: float | None = None) -> int:
        """Publish every unpublished row older than `grace` seconds (the publisher's own by
        default) that is not being published inline; returns how many were sent."""
        sent = 0
        while True:
            count = await self._publish_batch(self._grace if grace is None else grace)
            sent += count
            if count < self._batch_size:
                return sent

    async def _publish_batch(self, grace: float) -> int:
        taken: set[UUID] = set()
        try:
            async with driver_connection(self._engine) as db, db.transaction():
                locked = await outbox.lock_batch(
                    db, self._batch_size, older_than=grace, skip=self._in_flight
                )
                # A row handed over inline since the SELECT is the inline publisher's;
                # the rest are ours until marked (`committed` leaves them alone).
                batch = [p for p in locked if p.message.event_id not in self._in_flight]
                if not batch:
                    return 0
                taken = {p.message.event_id for p in batch}
                self._polling |= taken
                # All confirms in flight at once, then one UPDATE for the batch.
                results = await asyncio.gather(
                    *(self._send(pending.message) for pending in batch), return_exceptions=True
                )
                done = [
                    p.id
                    for p, r in zip(batch, results, strict=True)
                    if not isinstance(r, BaseException)
                ]
                await outbox.mark_published(db, done)
                failed = [r for r in results if isinstance(r, BaseException)]
        finally:
            self._polling -= taken
        self.published += len(done)
        self._metrics.events_published.inc(len(done))
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(batch)} events not confirmed: {failed[0]!r}")
        return len(done)
