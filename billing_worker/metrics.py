"""Prometheus metrics: the business series plus FastStream's own.

One registry per process (built by the composition root); the worker and the relay
serve it on BILLING_METRICS_PORT together with their health endpoints.

Every label value comes from a fixed set, never from a message: a caller chooses its
`reply_to` and a provider callback its event type, and each distinct label value is a
series kept for the life of the process. Reply queues share the destination
`default.reply`, error codes outside the contract's `ErrorCode`s, and anything else
unknown, are `other`.

Besides the series code paths count, the registry carries prometheus_client's process,
platform and gc collectors (its global registry has them; ours is built per process
object so that tests can build many) and `billing_worker_build_info`. What no code path
observes (queue depths, unpublished outbox rows, stuck payments) is sampled by
billing_worker/sampler.py into the gauges made here. docs/metrics.md lists every series.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

from aio_pika import IncomingMessage
from faststream.prometheus import ConsumeAttrs, PrometheusMiddleware
from faststream.rabbit.response import RabbitPublishCommand
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from billing_contracts import names
from billing_contracts.catalog import EVENT_MODELS
from billing_contracts.envelope import ErrorCode
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.transactions import Transition
from billing_worker.messaging.topology import ALL_WORK_QUEUES, Topology

if TYPE_CHECKING:
    from faststream.message import StreamMessage

OTHER = "other"
REPLY = "reply"

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ERROR_CODES = frozenset(code.value for code in ErrorCode)
SAMPLE_SOURCES = ("database", "broker")  # what the sampler reads; `billing_metrics_sample_up`


def process_registry() -> CollectorRegistry:
    """A fresh registry with the collectors prometheus_client gives its global one:
    `process_*` (CPU, memory, open files), `python_info` and `python_gc_*`."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)  # they read the process, not a registry: shareable
    return registry


def package_version() -> str:
    try:
        return metadata.version("billing-worker")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def error_code_label(code: object) -> str:
    """An error code of the contract, else `other` (a handler's reply is ours, but a
    label is kept for the life of the process: nothing unexpected becomes one)."""
    return code if isinstance(code, str) and code in ERROR_CODES else OTHER


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=process_registry)

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
        Info(
            "billing_worker_build", "The running billing-worker's version and Python", registry=r
        ).info({"version": package_version(), "python": platform.python_version()})
        self.refusals = Counter(
            "billing_refusals_total",
            "Messages answered with an error, by queue and error code (business refusals "
            "and the pipeline's forbidden, invalid_message and internal_error)",
            ["queue", "code"], registry=r,
        )  # fmt: skip
        # Sampled (billing_worker/sampler.py), every BILLING_METRICS_SAMPLE_SECONDS.
        self.outbox_unpublished = Gauge(
            "billing_outbox_unpublished_events", "Outbox events not yet published", registry=r
        )
        self.stuck_payments = Gauge(
            "billing_payments_stuck_processing",
            "Payments processing past BILLING_RECONCILE_AFTER_SECONDS and two reconciler rounds",
            registry=r,
        )
        self.queue_messages = Gauge(
            "billing_queue_messages",
            "Ready messages in each queue the worker consumes and in the dead-letter queue",
            ["queue"], registry=r,
        )  # fmt: skip
        self.queue_consumers = Gauge(
            "billing_queue_consumers", "Consumers of each of those queues", ["queue"], registry=r
        )
        # Set by the sampler only: the relay, which samples nothing, exports none.
        self.sample_up = Gauge(
            "billing_metrics_sample_up",
            "1 when the last sample of this source succeeded; 0 while it fails (the sampled "
            "gauges then keep their last value)",
            ["source"], registry=r,
        )  # fmt: skip

    def refused(self, queue: str, code: object) -> None:
        """Count an error reply to a message of `queue` (a route's queue: a fixed set)."""
        self.refusals.labels(queue, error_code_label(code)).inc()

    def refused_with(self, queue: str, reply: Mapping[str, object]) -> None:
        """Count a handler's error envelope `{"ok": false, "error": {"code": ...}}`."""
        error = reply.get("error")
        self.refused(queue, error.get("code") if isinstance(error, Mapping) else None)

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
