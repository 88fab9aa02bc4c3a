"""Prometheus metrics: the business series plus FastStream's own.

One registry per process (built by the composition root); the worker and the relay
serve it on BILLING_METRICS_PORT together with their health endpoints.

Every label value comes from a fixed set, never from a message: a caller chooses its
`reply_to` and a provider callback its event type, and each distinct label value is a
series kept for the life of the process. Reply queues share the destination
`default.reply`, anything else unknown is `other`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aio_pika import IncomingMessage
from faststream.prometheus import ConsumeAttrs, PrometheusMiddleware
from faststream.rabbit.response import RabbitPublishCommand
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billing_contracts import names
from billing_contracts.catalog import EVENT_MODELS
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.transactions import Transition
from billing_worker.messaging.topology import ALL_WORK_QUEUES, Topology

if TYPE_CHECKING:
    from faststream.message import StreamMessage

OTHER = "other"
REPLY = "reply"

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Histogram(
            "billing_messages_handled_seconds",
            "Messages handled by queue and outcome, with their handling time",
            ["queue", "outcome"], registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        # Observed by billing_worker/providers/observed.py around every gateway call:
        # provider = a gateway's name, operation from observed.OPERATIONS, outcome ok |
        # refused (the provider said no) | error (unreachable, timed out, a bug).
        self.provider_calls = Histogram(
            "billing_provider_call_seconds",
            "Payment provider API calls by provider, operation and outcome, with their time",
            ["provider", "operation", "outcome"], registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.transitions = Counter(
            "billing_transaction_transitions_total",
            "Committed transaction state transitions",
            ["kind", "from_status", "to_status"], registry=r,
        )  # fmt: skip
        self.payments = Counter(
            "billing_payments_total", "Payments by provider and outcome",
            ["provider", "outcome"], registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "billing_webhooks_total", "Webhook calls at the relay by provider and outcome",
            ["provider", "outcome"], registry=r,
        )  # fmt: skip
        self.provider_events = Counter(
            "billing_provider_events_total",
            "Provider events by provider, type (those billing acts on, else other) and outcome",
            ["provider", "type", "outcome"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "billing_dead_letters_total", "Messages dead-lettered by the worker",
            ["queue", "reason"], registry=r,
        )  # fmt: skip
        self.balance_alerts = Counter(
            "billing_balance_alerts_total", "balance.low alerts sent", ["currency"], registry=r
        )
        self.events_published = Counter(
            "billing_outbox_published_total", "Outbox events confirmed by the broker", registry=r
        )
        self.outbox_lag = Gauge(
            "billing_outbox_lag_seconds", "Age of the oldest unpublished outbox event", registry=r
        )
        self.renewals = Counter(
            "billing_renewals_total", "Renewal scheduler outcomes", ["outcome"], registry=r
        )

    def committed(
        self, transitions: Iterable[tuple[str, Transition]], events: Iterable[DomainEvent]
    ) -> None:
        """Count what one unit of work committed."""
        for kind, step in transitions:
            source = step.source.value if step.source else "none"
            self.transitions.labels(kind, source, step.target.value).inc()
        for event in events:
            if event.type in ("payment.success", "payment.failed"):
                outcome = "succeeded" if event.type == "payment.success" else "failed"
                self.payments.labels(str(event.data.get("provider")), outcome).inc()
            elif event.type == "balance.low":
                self.balance_alerts.labels(str(event.data.get("currency"))).inc()


@dataclass(frozen=True, slots=True)
class Destinations:
    """The exchanges and routing keys the worker knows; anything else is bucketed."""

    exchanges: frozenset[str]
    routing_keys: frozenset[str]

    @classmethod
    def of(cls, topology: Topology) -> Destinations:
        retries = {exchange.name for exchange, _ in topology.retry_queues()}
        return cls(
            exchanges=frozenset(
                {
                    "",
                    names.EVENTS_EXCHANGE,
                    names.DEAD_LETTER_EXCHANGE,
                    names.PROVIDER_CALLBACKS_EXCHANGE,
                    topology.orders_exchange_name,
                    *retries,
                }
            ),
            routing_keys=frozenset(
                {
                    *ALL_WORK_QUEUES,
                    names.PROVIDER_EVENTS_QUEUE,
                    names.PROVIDER_CALLBACK_ROUTING_KEY,
                    names.ORDER_CREATED_QUEUE,
                    names.ORDER_CREATED,
                    names.DEAD_LETTER_QUEUE,
                    *EVENT_MODELS,
                    *retries,
                }
            ),
        )

    def label(self, exchange: str | None, routing_key: str, *, publishing: bool) -> str:
        """`exchange.routing_key` for known ones; a reply (the default exchange, a routing
        key we do not own: the caller's reply queue) is `default.reply`."""
        exchange = exchange or ""
        if exchange not in self.exchanges:
            return f"{OTHER}.{OTHER}"
        if routing_key in self.routing_keys:
            key = routing_key
        else:
            key = REPLY if publishing and not exchange else OTHER
        return f"{exchange or 'default'}.{key}"


class BoundedRabbitMetricsSettings:
    """FastStream's RabbitMQ metrics settings, with destination names from a fixed set
    (FastStream's own labels publishes by the routing key, i.e. by every caller's
    reply queue)."""

    __slots__ = ("destinations", "messaging_system")

    def __init__(self, destinations: Destinations) -> None:
        self.messaging_system = "rabbitmq"
        self.destinations = destinations

    def get_consume_attrs_from_message(self, msg: StreamMessage[IncomingMessage]) -> ConsumeAttrs:
        raw = msg.raw_message
        name = self.destinations.label(raw.exchange, raw.routing_key or "", publishing=False)
        return {"destination_name": name, "message_size": len(msg.body), "messages_count": 1}

    def get_publish_destination_name_from_cmd(self, cmd: RabbitPublishCommand) -> str:
        return self.destinations.label(cmd.exchange.name, cmd.destination, publishing=True)


def faststream_metrics(
    registry: CollectorRegistry, topology: Topology
) -> PrometheusMiddleware[IncomingMessage, RabbitPublishCommand]:
    """FastStream's `faststream_*` series (as RabbitPrometheusMiddleware makes them),
    with bounded destination labels."""
    settings = BoundedRabbitMetricsSettings(Destinations.of(topology))
    return PrometheusMiddleware(settings_provider_factory=lambda _: settings, registry=registry)
