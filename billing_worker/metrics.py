"""Prometheus metrics: the business series of DESIGN §11 plus FastStream's own.

One registry per process (built by the composition root); the worker and the relay
serve it on BILLING_METRICS_PORT together with their health endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billing_worker.domain.events import DomainEvent
from billing_worker.domain.transactions import Transition

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
            "billing_provider_events_total", "Provider events by provider, type and outcome",
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
