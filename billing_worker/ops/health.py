"""What an operator (and the sampled /metrics gauges) wants to know about a running
deployment, read from the outside: queue depths and consumers, the outbox's backlog,
payments stuck in `processing`.

Queues are read with AMQP passive declares, which every RabbitMQ answers without the
management plugin: a passive declare returns the queue's ready-message and consumer
counts and creates nothing. One that names a missing queue fails with 404 and closes
its channel, so each queue gets a channel of its own, and a missing queue is reported
(``messages is None``) instead of breaking the reading of the others.

The SQL reads partial indexes that exist for the worker's own polling
(``ix_outbox_unpublished``, ``ix_transactions_processing``), so sampling it every few
seconds costs an index scan of the backlog, not of the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import aiormq
import asyncpg
from aio_pika.abc import AbstractConnection, AbstractRobustConnection

from billing_contracts import names
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from billing_worker.settings import Settings

DEAD_LETTER_QUEUE: str = names.DEAD_LETTER_QUEUE
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class QueueState:
    queue: str
    messages: int | None  # ready messages; None when the queue does not exist
    consumers: int | None


def command_queues(settings: Settings) -> list[str]:
    """Every queue the worker consumes: commands, queries, the Orders service's
    order-created events and the relay's provider callbacks (the routes of
    messaging/routes.py, which consume the same names whatever the settings)."""
    del settings  # the names are fixed by the contracts; kept for a future per-setting set
    return [*ALL_WORK_QUEUES, names.ORDER_CREATED_QUEUE, names.PROVIDER_EVENTS_QUEUE]


async def queue_states_on(
    connection: AbstractRobustConnection | AbstractConnection, queues: Sequence[str]
) -> list[QueueState]:
    """The state of each of `queues`, in order, on an open connection (which stays open).

    The declares go through the connection's AMQP layer (aiormq), not aio-pika channels:
    a robust connection's channel that the broker closes (the 404 of a missing queue)
    reopens itself, which would leave a channel behind for every missing queue. One
    channel serves every declare; only a missing queue's 404, which closes it, takes a
    new one (a channel opened and closed per queue, many a second, made the broker close
    the connection with CHANNEL_ERROR when a close and the next open crossed).
    Raises ConnectionError when the connection is down (a robust one reconnecting)."""
    if connection.transport is None:
        raise ConnectionError("the RabbitMQ connection is not open")
    amqp = connection.transport.connection
    states = []
    channel = None
    try:
        for name in queues:
            if channel is None:
                channel = await amqp.channel(publisher_confirms=False)
            try:
                declared = await channel.queue_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:  # the broker closed the channel
                states.append(QueueState(name, None, None))
                closed, channel = channel, None
                await closed.close()
            else:
                states.append(QueueState(name, declared.message_count, declared.consumer_count))
    finally:
        if channel is not None:
            await channel.close()  # nothing to do when the broker closed it
    return states


async def queue_states(amqp_url: str, queues: Sequence[str]) -> list[QueueState]:
    """`queue_states_on` over a connection of its own, closed afterwards."""
    connection = await aio_pika.connect(amqp_url, timeout=CONNECT_TIMEOUT)
    try:
        return await queue_states_on(connection, queues)
    finally:
        await connection.close()


@dataclass(frozen=True, slots=True)
class OutboxState:
    unpublished: int
    oldest_unpublished_age_s: float | None  # None when every event is published


_OUTBOX = """
SELECT count(*) AS unpublished,
       extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS oldest_age
FROM outbox WHERE published_at IS NULL
"""


async def outbox_state(db: asyncpg.Connection) -> OutboxState:
    """How many events are written but not yet confirmed by the broker, and how long the
    oldest of them has waited (the lag a consumer of billing.events sees)."""
    row = await db.fetchrow(_OUTBOX)
    assert row is not None  # an aggregate always returns its row
    age = row["oldest_age"]
    return OutboxState(int(row["unpublished"]), None if age is None else float(age))


# The reconciler's own condition (db/reconciliation.py) without its provider filter:
# untouched by a callback or by a reconciler claim (which bumps updated_at) for longer
# than the threshold. Refunds count too: their reconciler claims them the same way.
_STUCK = """
SELECT count(*) FROM transactions
WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
"""


def stuck_after_seconds(settings: Settings) -> float:
    """When a payment still `processing` counts as stuck: the reconciler re-reads one once
    it is untouched for BILLING_RECONCILE_AFTER_SECONDS (and its claim touches it), every
    BILLING_RECONCILE_INTERVAL_SECONDS; two rounds of grace keep a payment that is due in
    the next round from being reported."""
    return settings.reconcile_after_seconds + 2 * settings.reconcile_interval_seconds


async def stuck_payments(db: asyncpg.Connection, older_than_s: float) -> int:
    """Payments in `processing` that nothing (callback, reconciler) touched for longer
    than `older_than_s` seconds: the reconciler is not running or not keeping up."""
    return int(await db.fetchval(_STUCK, float(older_than_s)))
