"""Everything the worker declares on RabbitMQ. Declaring is idempotent."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import aio_pika
from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from billing_contracts import names
from billing_worker.settings import Settings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs, QuorumQueueArgs

log = logging.getLogger(__name__)

ALL_WORK_QUEUES = (*names.COMMAND_QUEUES, *names.QUERY_QUEUES)

# The broker's redelivery limit on the quorum queues the worker consumes, on top of
# BILLING_MAX_DELIVERIES. Our attempt header drives retries and dead-lettering: a failed
# message is acknowledged and a new copy (delivery count 0) goes through a delay queue,
# and nothing is ever requeued, so the broker's count only grows when a delivery ends
# without any acknowledgement (a worker killed by the message, connections lost to a
# failover or a restart). The broker's limit is the backstop for those: a message that
# crashes every worker that takes it is dead-lettered by RabbitMQ (to billing.dlx, at
# least once) when it is returned more often than the limit (limit + 1 deliveries). It is
# larger than ours, so ours always acts first.
DELIVERY_LIMIT_HEADROOM = 10


def delivery_limit(max_deliveries: int) -> int:
    return max_deliveries + DELIVERY_LIMIT_HEADROOM


# The relay's only way in: a durable direct exchange its broker user may write to (and
# nothing else); billing.provider-events is bound to it by PROVIDER_CALLBACK_ROUTING_KEY.
PROVIDER_CALLBACKS = RabbitExchange(
    names.PROVIDER_CALLBACKS_EXCHANGE, type=ExchangeType.DIRECT, durable=True
)


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and declarations, derived from settings."""

    quorum: bool
    orders_exchange_name: str
    retry_delays_ms: tuple[int, ...]
    dead_letter_max: int = 100_000
    max_deliveries: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            settings.quorum_queues,
            settings.orders_exchange,
            settings.retry_delays_ms,
            settings.dead_letter_max,
            settings.max_deliveries,
        )

    def _queue(
        self,
        name: str,
        *,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        consumed: bool = True,
    ) -> RabbitQueue:
        args: dict[str, Any] = {"x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE}
        args.update(arguments or {})
        args = {key: value for key, value in args.items() if value is not None}
        if self.quorum:
            # Dead-lettering out of a quorum queue is at-most-once unless asked otherwise;
            # at-least-once needs reject-publish (a full queue refuses, never drops).
            args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            if consumed:  # delay queues and the DLQ have no worker consuming them
                args["x-delivery-limit"] = delivery_limit(self.max_deliveries)
            return RabbitQueue(
                name,
                queue_type=QueueType.QUORUM,
                durable=True,
                arguments=cast("QuorumQueueArgs", args),
                routing_key=routing_key,
            )
        return RabbitQueue(
            name,
            queue_type=QueueType.CLASSIC,
            durable=True,
            arguments=cast("ClassicQueueArgs", args),
            routing_key=routing_key,
        )

    def work_queue(self, name: str) -> RabbitQueue:
        return self._queue(name)

    def queue_for(self, name: str) -> RabbitQueue:
        """The declaration of any queue the worker consumes, by name."""
        special = {
            names.PROVIDER_EVENTS_QUEUE: self.provider_events,
            names.ORDER_CREATED_QUEUE: self.order_created,
        }
        return special.get(name) or self.work_queue(name)

    @property
    def provider_events(self) -> RabbitQueue:
        return self._queue(names.PROVIDER_EVENTS_QUEUE)

    @property
    def provider_callbacks(self) -> RabbitExchange:
        return PROVIDER_CALLBACKS

    @property
    def order_created(self) -> RabbitQueue:
        return self._queue(names.ORDER_CREATED_QUEUE, routing_key=names.ORDER_CREATED)

    @property
    def orders_exchange(self) -> RabbitExchange:
        return RabbitExchange(self.orders_exchange_name, type=ExchangeType.TOPIC, durable=True)

    @property
    def commands_exchange(self) -> RabbitExchange:
        # No arguments: a NestJS client asserts it as {durable: true, arguments: {}}.
        return RabbitExchange(names.COMMANDS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)

    @property
    def events_exchange(self) -> RabbitExchange:
        return RabbitExchange(names.EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)

    @property
    def dead_letter_exchange(self) -> RabbitExchange:
        return RabbitExchange(names.DEAD_LETTER_EXCHANGE, type=ExchangeType.FANOUT, durable=True)

    @property
    def dead_letter_queue(self) -> RabbitQueue:
        """The end of the line: no dead-letter exchange of its own, and bounded. When
        full, the oldest dead letter is dropped (drop-head): dead-lettering never fails,
        so a full DLQ cannot stop the worker (with reject-publish the worker's confirmed
        dead-letter publish would be refused and the poison message redelivered)."""
        queue = self._queue(
            names.DEAD_LETTER_QUEUE,
            arguments={"x-dead-letter-exchange": None, "x-max-length": self.dead_letter_max},
            consumed=False,
        )
        queue.arguments["x-overflow"] = "drop-head"  # over the work queues' quorum default
        return queue

    def retry_name(self, attempt: int) -> str:
        """The delay queue (and its fanout exchange) used before delivery `attempt + 1`."""
        delays = self.retry_delays_ms
        return f"billing.retry.{delays[min(attempt - 1, len(delays) - 1)]}ms"

    def retry_queues(self) -> list[tuple[RabbitExchange, RabbitQueue]]:
        """One fanout exchange + TTL queue per delay; expired messages go back through the
        default exchange under their original routing key, i.e. to their original queue."""
        pairs = []
        for delay in sorted(set(self.retry_delays_ms)):
            name = f"billing.retry.{delay}ms"
            # Expired copies go back through the default exchange under their original
            # routing key (the work queue's name); the TTL is the back-off.
            queue = self._queue(
                name,
                arguments={"x-message-ttl": delay, "x-dead-letter-exchange": ""},
                consumed=False,
            )
            pairs.append((RabbitExchange(name, type=ExchangeType.FANOUT, durable=True), queue))
        return pairs


async def declare(
    broker: RabbitBroker, topology: Topology, *, urls: Sequence[str] | None = None
) -> None:
    """Declare what no subscriber declares for us: exchanges, DLQ, retry and work queues.

    With the broker's `urls`, a dead-letter queue that exists with other arguments (an
    earlier version's, without the bound) is used as it is, with a warning, instead of
    failing start-up (see `declare_dead_letter_queue`)."""
    await broker.declare_exchange(topology.events_exchange)
    await broker.declare_exchange(topology.orders_exchange)
    dlx = await broker.declare_exchange(topology.dead_letter_exchange)
    bounded = urls is None or await declare_dead_letter_queue(urls, topology)
    dlq = await broker.declare_queue(
        topology.dead_letter_queue
        if bounded
        else RabbitQueue(names.DEAD_LETTER_QUEUE, declare=False)
    )
    await dlq.bind(dlx, routing_key="#")
    for exchange, queue in topology.retry_queues():
        declared_exchange = await broker.declare_exchange(exchange)
        declared_queue = await broker.declare_queue(queue)
        await declared_queue.bind(declared_exchange, routing_key="#")
    commands = await broker.declare_exchange(topology.commands_exchange)
    for name in ALL_WORK_QUEUES:
        work_queue = await broker.declare_queue(topology.work_queue(name))
        await work_queue.bind(commands, routing_key=name)
    callbacks = await broker.declare_exchange(topology.provider_callbacks)
    provider_events = await broker.declare_queue(topology.provider_events)
    await provider_events.bind(callbacks, routing_key=names.PROVIDER_CALLBACK_ROUTING_KEY)
    order_queue = await broker.declare_queue(topology.order_created)
    orders = await broker.declare_exchange(topology.orders_exchange)
    await order_queue.bind(orders, routing_key=names.ORDER_CREATED)


def dead_letter_policy(topology: Topology, vhost: str = "/") -> str:
    """The one-time command that bounds a dead-letter queue declared without the bound.

    An operator policy, not a user policy: it combines with whatever user policy the
    deployment already has on the queue (the lower max-length wins). RabbitMQ's default
    overflow is drop-head, as the worker declares it."""
    pattern = "^" + names.DEAD_LETTER_QUEUE.replace(".", "\\.") + "$"
    definition = json.dumps({"max-length": topology.dead_letter_max})
    return (
        f"rabbitmqctl set_operator_policy -p {shlex.quote(vhost)} billing-dead-letter-max "
        f"{shlex.quote(pattern)} {shlex.quote(definition)} --apply-to queues"
    )


async def declare_dead_letter_queue(urls: Sequence[str], topology: Topology) -> bool:
    """Declare the bounded DLQ on a connection of its own (to the first broker address
    that answers); False if it exists unbounded.

    RabbitMQ refuses to change an existing queue's arguments (406 PRECONDITION_FAILED,
    which closes the channel): a DLQ declared by an earlier version, or with another
    BILLING_DEAD_LETTER_MAX, stays as it is. The worker then uses it as it is and says
    how to bound it without losing its dead letters."""
    queue = topology.dead_letter_queue
    connection, url = await _first_reachable(urls)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed as refused:
            vhost = unquote(urlsplit(url).path[1:]) or "/"
            log.warning(
                "%s exists with other arguments than x-max-length=%d (declared by an earlier "
                "version, or with another BILLING_DEAD_LETTER_MAX): using it as it is. "
                "RabbitMQ said: %s. Bound it once with: %s",
                queue.name, topology.dead_letter_max, refused, dead_letter_policy(topology, vhost),
            )  # fmt: skip
            return False
        return True
    finally:
        await connection.close()


async def _first_reachable(urls: Sequence[str]) -> tuple[aio_pika.abc.AbstractConnection, str]:
    failure: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=10), url
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
            failure = error
    raise ConnectionError(f"no RabbitMQ address answered: {failure}")
