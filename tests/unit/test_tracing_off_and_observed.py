"""Tracing's switch and its no-op path, and the provider-call wrapper (providers/observed.py):
labels from fixed sets, one observation per outermost call, a span only when on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Histogram
from pydantic import ValidationError

from billing_worker import tracing
from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.providers.base import Gateways, PaymentResult, PaymentStatus
from billing_worker.providers.observed import HISTOGRAM_ATTRIBUTE, attach, observed
from billing_worker.settings import Settings

URLS = {"database_url": "postgresql+asyncpg://u@h/db", "rabbitmq_url": "amqp://guest:guest@h/"}


def settings(**values: Any) -> Settings:
    given: dict[str, Any] = {**URLS, **values}
    return Settings(_env_file=None, **given)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on with an in-memory exporter (not the global provider: unit tests)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._provider, tracing._tracer = provider, provider.get_tracer("test")
    yield exporter
    tracing.shutdown()
    provider.shutdown()


@pytest.fixture(autouse=True)
def off() -> Iterator[None]:
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.mark.parametrize(
    ("ours", "environ", "on"),
    [
        (None, {}, False),
        ("http://collector:4318", {}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        (None, {"OTEL_SERVICE_NAME": "billing"}, False),  # a name alone exports nothing
        ("http://collector:4318", {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_an_endpoint_or_exporter_is_configured(
    ours: str | None, environ: dict[str, str], on: bool
) -> None:
    assert tracing.configured(settings(otel_endpoint=ours), environ) is on


def test_the_endpoint_setting_must_be_an_http_url_and_empty_means_unset() -> None:
    assert settings(otel_endpoint="").otel_endpoint is None
    assert settings(otel_endpoint="https://otel.example:4318").otel_endpoint
    with pytest.raises(ValidationError, match="otel_endpoint"):
        settings(otel_endpoint="collector:4317")


def test_off_nothing_is_created_and_no_header_written(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup(settings()) is None
    assert not tracing.enabled()
    with tracing.span("anything") as span:
        assert span is None
        assert tracing.current_headers() == {}
    assert tracing.telemetry_middlewares(None) == []


def test_on_headers_carry_the_current_span_and_attached_restores_it(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("writer") as span:
        assert span is not None
        headers = tracing.current_headers()
        trace_id = span.get_span_context().trace_id
    assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
    with tracing.attached(headers), tracing.span("later") as later:
        assert later is not None
        assert later.get_span_context().trace_id == trace_id
    with tracing.attached({"x-provider": "stripe"}), tracing.span("alone") as alone:
        assert alone is not None
        assert alone.get_span_context().trace_id != trace_id  # nothing to continue: a new trace


def test_a_configured_setup_makes_an_otlp_provider_and_shuts_it_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not the process's global provider: the integration tests set theirs.
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    provider = tracing.setup(settings(otel_endpoint="http://127.0.0.1:9"))
    assert provider is not None
    assert tracing.provider() is provider
    assert provider.resource.attributes["service.name"] == "billing-worker"
    assert len(tracing.telemetry_middlewares(provider)) == 1
    tracing.shutdown()  # nothing was recorded: nothing to send to the closed port
    assert tracing.provider() is None


class Gateway:
    """A gateway double whose answers the test picks."""

    def __init__(self, name: str = "stripe") -> None:
        self.name = name
        self.answer: Any = PaymentResult("pi_1", PaymentStatus.SUCCEEDED)

    @observed("create_payment")
    async def create_payment(self) -> PaymentResult:
        if isinstance(self.answer, Exception):
            raise self.answer
        result: PaymentResult = self.answer
        return result

    @observed("confirm")
    async def confirm(self) -> PaymentResult:
        return await self.create_payment()  # a call inside a call: counted once


@pytest.fixture
def histogram() -> Histogram:
    return Histogram("calls", "calls", ["provider", "operation", "outcome"], registry=None)


def count(histogram: Histogram, *labels: str) -> float:
    registry = CollectorRegistry()
    registry.register(histogram)
    provider, operation, outcome = labels
    value = registry.get_sample_value(
        "calls_count", {"provider": provider, "operation": operation, "outcome": outcome}
    )
    return value or 0.0


async def test_each_call_is_observed_with_its_outcome(histogram: Histogram) -> None:
    gateway = Gateway()
    attach(Gateways({"stripe": gateway}, default=None), histogram)  # type: ignore[dict-item]
    await gateway.create_payment()
    gateway.answer = PaymentResult(None, PaymentStatus.FAILED, failure_code="card_declined")
    await gateway.create_payment()
    for failure in (ProviderError("refund refused"), TransientError("503"), KeyError("bug")):
        gateway.answer = failure
        with pytest.raises(type(failure)):
            await gateway.create_payment()
    assert count(histogram, "stripe", "create_payment", "ok") == 1
    assert count(histogram, "stripe", "create_payment", "refused") == 2
    assert count(histogram, "stripe", "create_payment", "error") == 2


async def test_a_nested_call_is_part_of_the_outer_one_and_unknown_names_are_other(
    histogram: Histogram, spans: InMemorySpanExporter
) -> None:
    gateway = Gateway(name="acme-pay")
    setattr(gateway, HISTOGRAM_ATTRIBUTE, histogram)
    await gateway.confirm()
    assert count(histogram, "other", "confirm", "ok") == 1
    assert count(histogram, "other", "create_payment", "ok") == 0
    assert [s.name for s in spans.get_finished_spans()] == ["provider other confirm"]


async def test_a_refused_call_is_a_span_with_its_outcome(spans: InMemorySpanExporter) -> None:
    gateway = Gateway()  # never attached: traced, not measured
    gateway.answer = PaymentResult(None, PaymentStatus.FAILED)
    await gateway.create_payment()
    (span,) = spans.get_finished_spans()
    assert span.name == "provider stripe create_payment"
    assert span.attributes is not None
    assert span.attributes["billing.provider.outcome"] == "refused"


def test_an_operation_outside_the_fixed_set_is_refused_at_decoration() -> None:
    with pytest.raises(ValueError, match="OPERATIONS"):
        observed("charge_everything")
