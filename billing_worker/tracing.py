"""OpenTelemetry tracing: off unless configured, and then one trace per caller's request.

Configured means `BILLING_OTEL_ENDPOINT` is set, or one of the standard variables
`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER` (other than `none`), and `OTEL_SDK_DISABLED` is not `true`. Spans
then go over OTLP/HTTP (protobuf, whatever `OTEL_TRACES_EXPORTER` or
`OTEL_EXPORTER_OTLP_PROTOCOL` name: no gRPC stack in the image) in batches; every
other `OTEL_*` variable the SDK reads (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, ...) works as OpenTelemetry
documents it.

Off, nothing here creates a span or touches a message's headers: `span()` is a
`nullcontext` and `current_headers()` an empty dict, and the worker leaves FastStream's
telemetry middleware out (it extracts headers and builds attributes per message even
under the no-op provider).

The trace travels: the typed client injects W3C `traceparent`/`tracestate` into the
request's AMQP headers; FastStream's middleware continues it in the consume span; the
database transaction (`units.open_unit`) and each provider call
(`providers/observed.py`) are its children; the outbox rows the transaction writes keep
`current_headers()` (db/uow.py), and the outbox publisher publishes each row inside the
context they name (`attached`), so the event's headers continue the caller's trace.

State is per process (the worker and the relay each call `setup` once before their
broker starts, `shutdown` after it stopped). The global provider of the OpenTelemetry
API is set too, when nothing else set it first, for other instrumentations.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from billing_worker.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "billing-worker"
TRACEPARENT = "traceparent"
_STANDARD_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_owned = False  # the provider is ours to shut down (not a test's)


def configured(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """Whether tracing is on: an endpoint of ours or of the standard variables, or an
    exporter chosen by `OTEL_TRACES_EXPORTER` (`none` keeps it off)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.otel_endpoint:
        return True
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(name, "").strip() for name in _STANDARD_ENDPOINTS)


def _version() -> str:
    try:
        return metadata.version("billing-worker")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _otlp_exporter(settings: Settings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    if settings.otel_endpoint:  # the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT
        return OTLPSpanExporter(endpoint=settings.otel_endpoint.rstrip("/") + "/v1/traces")
    return OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables


def setup(
    settings: Settings, *, provider: TracerProvider | None = None, role: str = "worker"
) -> TracerProvider | None:
    """Turn tracing on if configured; the provider, or None when off.

    `provider`: use this one (tests pass one exporting to the SDK's in-memory exporter);
    it stays the caller's to shut down. Call before the broker starts: FastStream's
    middleware takes the provider when it is made."""
    global _provider, _tracer, _owned
    if provider is None:
        if _provider is not None:  # already on (a test set up its own provider)
            return _provider
        if not configured(settings):
            return None
        provider = _otlp_provider(settings, role)
        owned = True
    else:
        shutdown()
        owned = False
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # once per process: the API allows no second
    _provider, _owned = provider, owned
    _tracer = provider.get_tracer("billing_worker", _version())
    return provider


def _otlp_provider(settings: Settings, role: str) -> TracerProvider:
    """Spans batched to the OTLP/HTTP exporter, under the service's resource."""
    resource = Resource.create(
        {
            SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or SERVICE,
            SERVICE_VERSION: _version(),
            "billing.role": role,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
    log.info("tracing on: OTLP over HTTP, service %s", resource.attributes[SERVICE_NAME])
    return provider


def shutdown() -> None:
    """Turn tracing off again; a provider `setup` made is flushed and shut down."""
    global _provider, _tracer, _owned
    provider, owned = _provider, _owned
    _provider, _tracer, _owned = None, None, False
    if provider is not None and owned:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def provider() -> TracerProvider | None:
    """The tracer provider `setup` made, while tracing is on."""
    return _provider


def span(
    name: str,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> contextlib.AbstractContextManager[trace.Span | None]:
    """A child span of the current context, current in the block; a no-op when off.
    An exception leaving the block marks the span as an error (the SDK's default)."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def current_headers() -> dict[str, str]:
    """The W3C trace context of the current span as message headers; {} when off or
    when there is no current span."""
    if _tracer is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def attached(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Make the trace context carried by `headers` current in the block, when tracing is
    on and they carry one (an outbox row, a webhook request); otherwise change nothing."""
    if _tracer is None or not headers or TRACEPARENT not in headers:
        yield
        return
    carrier = {key: value for key, value in headers.items() if isinstance(value, str)}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def telemetry_middlewares(provider: TracerProvider | None) -> list[Any]:
    """FastStream's RabbitMQ telemetry middleware on `provider`, or none when off."""
    if provider is None:
        return []
    from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

    return [RabbitTelemetryMiddleware(tracer_provider=provider)]
