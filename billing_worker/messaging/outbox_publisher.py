"""Sends committed outbox rows to RabbitMQ with publisher confirms, then marks them sent.

Woken right after each commit that wrote events, and polling as a safety net (other
replicas' rows, rows left behind by a crash or by a broker outage). Delivery is at least
once: a crash between the confirm and the mark sends the row again with the same
`message_id`, which is how consumers dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db import outbox
from billing_worker.db.engine import driver_connection
from billing_worker.metrics import Metrics

log = logging.getLogger(__name__)

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
    ) -> None:
        self._metrics = metrics or Metrics()
        self._engine = engine
        self._send = send
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def notify(self, events: int = 1) -> None:
        """Called after a commit that wrote `events` rows."""
        if events:
            self._wake.set()

    def start(self) -> None:
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
        task.cancel()
        await asyncio.wait([task])  # a loop that had died was the watchdog's to report
        with contextlib.suppress(Exception):
            await self.drain()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                await self.drain()
                await self._measure_lag()
                failures = 0
            except Exception as error:  # the broker or the database is away: back off
                failures += 1
                delay = min(self._poll_interval * 2**failures, 30.0)
                log.warning("outbox publishing failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()

    async def _measure_lag(self) -> None:
        async with driver_connection(self._engine) as db:
            self._metrics.outbox_lag.set(await outbox.lag_seconds(db))

    async def drain(self) -> int:
        """Publish every unpublished row; returns how many were sent."""
        sent = 0
        while True:
            count = await self._publish_batch()
            sent += count
            if count < self._batch_size:
                return sent

    async def _publish_batch(self) -> int:
        async with driver_connection(self._engine) as db, db.transaction():
            batch = await outbox.lock_batch(db, self._batch_size)
            if not batch:
                return 0
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
        self.published += len(done)
        self._metrics.events_published.inc(len(done))
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(batch)} events not confirmed: {failed[0]!r}")
        return len(done)
