"""Tracing across the services, with the SDK's in-memory exporter, a real broker and
database: a typed-client call and the event it caused share one trace, the worker's
spans (consume, database transaction, provider call, event publish) in it; a webhook's
trace continues into the worker; with tracing off the worker exports nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from billing_contracts import names
from billing_contracts.client import BillingClient, Event, EventStream
from billing_contracts.money import Money
from billing_worker import tracing
from billing_worker.app import Worker, build_worker, outbox_sender
from billing_worker.db import outbox
from billing_worker.relay.runner import relay_broker
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from support.invariants import connect
from support.relay import WEBHOOK_SECRET, Relay
from support.settings import make_settings

pytestmark = pytest.mark.integration

WAIT = 60.0  # a deadline, not a measurement: the machine is shared with other runs


@pytest.fixture(scope="session")
def traces() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """One SDK provider for the test process, the global one: the typed client's spans
    (the OpenTelemetry API's global tracer) and the worker's land in one exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another global tracer provider is set"
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def exporter(
    traces: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    _, exported = traces
    tracing.shutdown()  # whatever an earlier test left on
    exported.clear()
    yield exported
    tracing.shutdown()
    exported.clear()


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    return make_settings(database_url, rabbitmq_url, stripe_webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
async def traced_worker(
    settings: Settings,
    traces: tuple[TracerProvider, InMemorySpanExporter],
    exporter: InMemorySpanExporter,
) -> AsyncIterator[Worker]:
    """A worker with tracing on: set up before it is built (its broker's middleware)."""
    tracing.setup(settings, provider=traces[0])
    worker = build_worker(settings)
    async with worker.app:
        yield worker


@pytest.fixture
async def billing(rabbitmq_url: str) -> AsyncIterator[BillingClient]:
    async with BillingClient(rabbitmq_url, timeout=WAIT, connection_name="test-tracing") as client:
        yield client


@pytest.fixture
async def withdrawals(rabbitmq_url: str) -> AsyncIterator[AbstractQueue]:
    """An event consumer of its own: a queue bound to `withdrawal.completed`."""
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(names.EVENTS_EXCHANGE, ensure=False)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="withdrawal.completed")
    yield queue
    await connection.close()


def usd(amount: str) -> Money:
    return Money(amount=amount, currency="USD")


async def fund(billing: BillingClient, user: str, amount: str) -> None:
    async with billing.events("deposit.completed") as stream:
        result = await billing.deposit(
            user_id=user, amount=usd(amount), provider="sandbox", idempotency_key=uuid.uuid4().hex
        )
        await first(
            stream, lambda e: getattr(e.data, "transaction_id", None) == result.transaction.id
        )


async def first(stream: EventStream, match: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if match(event):
                return event
    raise AssertionError("the stream ended")


async def event_for(queue: AbstractQueue, user: str) -> AbstractIncomingMessage:
    """The `withdrawal.completed` event of `user` (others' are skipped)."""
    async with asyncio.timeout(WAIT), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            if user.encode() in message.body:
                return message
    raise AssertionError("the queue closed")


async def spans_until(
    exporter: InMemorySpanExporter, done: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The exported spans once `done` holds for them (spans end after the replies)."""
    async with asyncio.timeout(WAIT):
        while not done(spans := list(exporter.get_finished_spans())):
            await asyncio.sleep(0.02)
    return spans


def in_trace(spans: list[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(spans: list[ReadableSpan], span: ReadableSpan) -> ReadableSpan | None:
    parent = span.parent
    return next((s for s in spans if parent and s.context.span_id == parent.span_id), None)


def ancestors(spans: list[ReadableSpan], span: ReadableSpan) -> list[str]:
    """The names of `span`'s exported ancestors, nearest first."""
    found, current = [], parent_of(spans, span)
    while current is not None:
        found.append(current.name)
        current = parent_of(spans, current)
    return found


def trace_id_of(headers: dict[str, Any] | None) -> int:
    carrier = {k: v for k, v in (headers or {}).items() if isinstance(v, str)}
    return trace.get_current_span(propagate.extract(carrier)).get_span_context().trace_id


async def test_a_client_call_and_the_event_it_caused_share_one_trace(
    traced_worker: Worker,
    database_url: str,
    billing: BillingClient,
    withdrawals: AbstractQueue,
    exporter: InMemorySpanExporter,
) -> None:
    user = f"trace-{uuid.uuid4().hex[:12]}"
    await fund(billing, user, "10.00")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        await billing.withdraw(
            user_id=user, amount=usd("4.00"), description="a mug", idempotency_key="k-" + user
        )
    trace_id = caller.get_span_context().trace_id

    event = await event_for(withdrawals, user)
    assert trace_id_of(event.headers) == trace_id  # an event consumer continues the trace
    async with connect(database_url) as db:
        kept = await db.fetchval(
            "SELECT headers::text FROM outbox WHERE type = 'withdrawal.completed' "
            "AND payload->'data'->>'user_id' = $1",
            user,
        )
    assert trace_id_of(json.loads(kept)) == trace_id  # the row keeps it, for the poll too

    consume = f"default.{names.WALLET_WITHDRAW} process"
    event_publish = f"{names.EVENTS_EXCHANGE}.withdrawal.completed publish"
    spans = await spans_until(
        exporter,
        lambda found: (
            bool(named(in_trace(found, trace_id), event_publish))
            and bool(named(in_trace(found, trace_id), consume))
        ),
    )
    mine = in_trace(spans, trace_id)
    client_publish = named(mine, f"{names.WALLET_WITHDRAW} publish")
    assert [s.kind for s in client_publish] == [SpanKind.PRODUCER]
    (consumed,) = named(mine, consume)
    assert consumed.kind is SpanKind.CONSUMER
    assert ancestors(mine, consumed)[-2:] == [client_publish[0].name, "caller"]
    transactions = [s for s in named(mine, "db transaction") if consume in ancestors(mine, s)]
    assert len(transactions) == 1
    assert transactions[0].attributes is not None
    written = transactions[0].attributes["billing.events"]
    assert isinstance(written, int)
    assert written >= 1  # withdrawal.completed, at least
    (published,) = named(mine, event_publish)
    assert published.kind is SpanKind.PRODUCER
    # The event was published in the context its outbox row kept: the transaction's.
    assert "db transaction" in ancestors(mine, published)
    assert consume in ancestors(mine, published)


async def test_a_row_is_published_in_the_context_it_kept_whoever_publishes_it(
    traced_worker: Worker, withdrawals: AbstractQueue, exporter: InMemorySpanExporter
) -> None:
    """The outbox poll publishes outside any command's context: the row's headers alone
    carry the trace into the event."""
    with trace.get_tracer("test").start_as_current_span("writer") as writer:
        kept = tracing.current_headers()
    trace_id = writer.get_span_context().trace_id
    user = f"trace-poll-{uuid.uuid4().hex[:12]}"
    message = outbox.OutboxMessage(
        uuid.uuid4(),
        names.EVENTS_EXCHANGE,
        "withdrawal.completed",
        "withdrawal.completed",
        json.dumps({"data": {"user_id": user}}),
        kept,
    )
    assert trace.get_current_span().get_span_context().trace_id == 0  # no context here
    await outbox_sender(traced_worker.broker, "guest")(message)
    event = await event_for(withdrawals, user)
    assert trace_id_of(event.headers) == trace_id
    publish = f"{names.EVENTS_EXCHANGE}.withdrawal.completed publish"
    spans = await spans_until(exporter, lambda found: bool(named(found, publish)))
    (published,) = named(spans, publish)
    assert ancestors(spans, published)[-1] == "writer"


async def test_a_sandbox_deposit_has_its_provider_span_and_the_histogram_observed(
    traced_worker: Worker, billing: BillingClient, exporter: InMemorySpanExporter
) -> None:
    calls = traced_worker.metrics.registry.get_sample_value
    labels = {"provider": "sandbox", "operation": "create_payment", "outcome": "ok"}
    before = calls("billing_provider_call_seconds_count", labels) or 0.0
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        await billing.deposit(
            user_id=f"trace-{uuid.uuid4().hex[:12]}",
            amount=usd("5.00"),
            provider="sandbox",
            idempotency_key=uuid.uuid4().hex,
        )
    trace_id = caller.get_span_context().trace_id
    consume = f"default.{names.WALLET_DEPOSIT} process"
    # The sandbox's callback goes through the outbox to billing.provider-events: its
    # handling continues the deposit's trace too.
    callback = f"default.{names.PROVIDER_EVENTS_QUEUE} process"
    spans = in_trace(
        await spans_until(exporter, lambda found: bool(named(in_trace(found, trace_id), callback))),
        trace_id,
    )
    (provider_call,) = named(spans, "provider sandbox create_payment")
    assert provider_call.kind is SpanKind.CLIENT
    assert provider_call.attributes is not None
    assert provider_call.attributes["billing.provider.outcome"] == "ok"
    assert consume in ancestors(spans, provider_call)
    assert calls("billing_provider_call_seconds_count", labels) == before + 1
    handled = named(spans, callback)  # once, or again if a delivery was retried
    assert handled
    assert all(consume in ancestors(spans, span) for span in handled)


async def test_a_webhook_trace_continues_from_the_relay_into_the_worker(
    traced_worker: Worker, settings: Settings, exporter: InMemorySpanExporter
) -> None:
    broker = relay_broker(settings)  # after tracing.setup: with the telemetry middleware
    await broker.connect()
    try:
        relay = Relay(settings, broker)
        body = FakeStripe().event("payment_intent.succeeded", {"id": f"pi_{uuid.uuid4().hex}"})
        assert (await relay.stripe(body)).status_code == 200
    finally:
        await broker.stop()
    callback = f"{names.PROVIDER_CALLBACKS_EXCHANGE}.{names.PROVIDER_CALLBACK_ROUTING_KEY} process"

    def done(found: list[ReadableSpan]) -> bool:
        webhooks = named(found, "webhook stripe")
        return bool(webhooks) and bool(
            named(in_trace(found, webhooks[0].context.trace_id), callback)
        )

    spans = await spans_until(exporter, done)
    (webhook,) = named(spans, "webhook stripe")
    assert webhook.kind is SpanKind.SERVER
    assert webhook.attributes is not None
    assert webhook.attributes["http.response.status_code"] == 200
    mine = in_trace(spans, webhook.context.trace_id)
    assert all("webhook stripe" in ancestors(mine, s) for s in named(mine, callback))


async def test_with_tracing_off_the_worker_exports_nothing_and_adds_no_headers(
    settings: Settings,
    billing: BillingClient,
    withdrawals: AbstractQueue,
    exporter: InMemorySpanExporter,
) -> None:
    assert not tracing.configured(settings)
    worker = build_worker(settings)
    assert tracing.provider() is None
    assert not [m for m in worker.broker.middlewares if "Telemetry" in type(m).__name__]
    async with worker.app:
        user = f"trace-off-{uuid.uuid4().hex[:12]}"
        await fund(billing, user, "10.00")
        with trace.get_tracer("test").start_as_current_span("caller"):
            await billing.withdraw(
                user_id=user, amount=usd("4.00"), description="a mug", idempotency_key="k-" + user
            )
        event = await event_for(withdrawals, user)
    assert "traceparent" not in (event.headers or {})
    scopes = {
        s.instrumentation_scope.name
        for s in exporter.get_finished_spans()
        if s.instrumentation_scope
    }
    assert scopes == {"test", "billing_contracts.client"}  # the caller's own, nothing else
    # Measured all the same: the histogram does not depend on tracing.
    labels = {"provider": "sandbox", "operation": "create_payment", "outcome": "ok"}
    assert worker.metrics.registry.get_sample_value("billing_provider_call_seconds_count", labels)
