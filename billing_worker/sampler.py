"""Sampled gauges: what no code path of the worker sees happen.

A counter goes up where something happens; a queue filling up, an outbox row nobody
publishes (the broker is down) or a payment that stays `processing` is the absence of
events, so the worker looks every BILLING_METRICS_SAMPLE_SECONDS (15 s by default):

- `billing_outbox_unpublished_events` and `billing_outbox_lag_seconds` (the publisher
  also sets the lag after each of its rounds, but a round that fails sets nothing: the
  sample keeps it rising while the broker is down);
- `billing_payments_stuck_processing`: payments `processing` past
  BILLING_RECONCILE_AFTER_SECONDS and two rounds of the reconciler
  (`health.stuck_after_seconds`), those it should have settled;
- `billing_queue_messages` / `billing_queue_consumers` of every queue the worker consumes
  and of the dead-letter queue, by AMQP passive declares on a connection of the sampler's
  (no management plugin; the dead-letter queue's depth survives restarts, unlike the
  per-process `billing_dead_letters_total`).

The queries are billing_worker/ops/health.py's, the ones `billing-worker status` prints.

A failing sample never stops the worker. Each source (database, broker) is judged on
its own: `billing_metrics_sample_up{source}` is 1 after a good sample and 0 while it
fails, and the gauges of a failing source keep their last value, so that an alert already
firing does not resolve because the thing it watches became unreadable (the
`BillingMetricsSamplingFailing` alert covers that case). A failure is logged when a
source starts failing and again when it recovers, not at every sample.

Every replica samples: the values are the same in each (take `max` across instances),
and at 15 s the cost is two short queries and one channel of passive declares per
replica, small beside the traffic of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from aio_pika.abc import AbstractConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker import background
from billing_worker.db.engine import driver_connection
from billing_worker.metrics import Metrics
from billing_worker.ops import health
from billing_worker.redaction import failure_reason

log = logging.getLogger(__name__)

# A sample that takes this long failed: the next one starts on time.
SAMPLE_TIMEOUT_SECONDS = 10.0

Connection = Callable[[], AbstractConnection | None]


class Sampler:
    """The background task that sets the sampled gauges of `metrics`."""

    def __init__(
        self,
        metrics: Metrics,
        engine: AsyncEngine,
        connection: Connection,
        queues: Sequence[str],
        *,
        stuck_after_seconds: float,
        interval_seconds: float,
        amqp_url: str | None = None,
    ) -> None:
        self._metrics = metrics
        self._engine = engine
        self._connection = connection  # the broker's current one (it reconnects)
        # With a URL, every broker sample opens and closes a connection of its own: raw
        # channels opened on the worker's connection could close it (a CHANNEL_ERROR at
        # shutdown did, in the fault suite).
        self._amqp_url = amqp_url
        self._queues = tuple(queues)
        self._stuck_after = stuck_after_seconds
        self._interval = interval_seconds
        self._failing: dict[str, bool] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="metrics-sampler")

    async def stop(self) -> None:
        if self.task is None:
            return
        task, self.task = self.task, None
        await background.stop(task)

    async def _run(self) -> None:
        while True:
            await self.sample()
            background.raise_if_cancelled()  # a sample may have caught its cancellation
            await asyncio.sleep(self._interval)

    async def sample(self) -> None:
        """One sample of each source; never raises (but for cancellation)."""
        await self._sample("database", self._database)
        await self._sample("broker", self._broker)

    async def _sample(self, source: str, read: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(SAMPLE_TIMEOUT_SECONDS):
                await read()
        except Exception as failure:  # a sample must never end the task
            background.raise_if_cancelled()  # ... but for a cancellation in disguise
            self._metrics.sample_up.labels(source).set(0)
            if not self._failing.get(source):
                log.warning(
                    "metrics: sampling the %s failed (%s); its gauges keep their last "
                    "value until a sample succeeds",
                    source, reason_of(failure),
                )  # fmt: skip
            self._failing[source] = True
            return
        self._metrics.sample_up.labels(source).set(1)
        if self._failing.get(source):
            log.info("metrics: sampling the %s works again", source)
        self._failing[source] = False

    async def _database(self) -> None:
        async with driver_connection(self._engine) as db:
            outbox = await health.outbox_state(db)
            stuck = await health.stuck_payments(db, self._stuck_after)
        self._metrics.outbox_unpublished.set(outbox.unpublished)
        self._metrics.outbox_lag.set(outbox.oldest_unpublished_age_s or 0.0)
        self._metrics.stuck_payments.set(stuck)

    async def _broker(self) -> None:
        for state in await self._queue_states():
            if state.messages is None or state.consumers is None:  # no such queue (yet)
                with contextlib.suppress(KeyError):
                    self._metrics.queue_messages.remove(state.queue)
                    self._metrics.queue_consumers.remove(state.queue)
                continue
            self._metrics.queue_messages.labels(state.queue).set(state.messages)
            self._metrics.queue_consumers.labels(state.queue).set(state.consumers)

    async def _queue_states(self) -> list[health.QueueState]:
        if self._amqp_url is not None:
            return await health.queue_states(self._amqp_url, self._queues)
        connection = self._connection()
        if connection is None or not connection.connected.is_set():  # reconnecting
            raise ConnectionError("the worker is not connected to RabbitMQ")
        return await health.queue_states_on(connection, self._queues)


def reason_of(failure: Exception) -> str:
    if isinstance(failure, TimeoutError) and not str(failure):
        return f"no answer within {SAMPLE_TIMEOUT_SECONDS:g} s"
    return failure_reason(failure)
