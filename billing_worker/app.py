"""The composition root: settings in, a ready FastStream worker out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.exceptions import ChannelPreconditionFailed
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_contracts.catalog import EVENT_MODELS, EVENT_PURPOSES
from billing_contracts.envelope import EventEnvelope
from billing_worker import tracing
from billing_worker.access import Access, broker_login, load_policy
from billing_worker.db import outbox
from billing_worker.db.engine import create_engine, driver_connection
from billing_worker.db.uow import Clock, UnitOfWork, utc_now
from billing_worker.handlers.deps import Deps
from billing_worker.jobs.hold_expiry import HoldExpiry
from billing_worker.jobs.invoice_overdue import InvoiceOverdue
from billing_worker.jobs.reconcile import Reconciler
from billing_worker.jobs.renewals import Renewals
from billing_worker.jobs.retention import Retention
from billing_worker.messaging import topology as topo
from billing_worker.messaging.outbox_publisher import OutboxPublisher
from billing_worker.messaging.pipeline import Pipeline, Route
from billing_worker.messaging.routes import all_routes, batch_lanes
from billing_worker.metrics import Metrics, faststream_metrics
from billing_worker.observability import InternalServer, internal_app
from billing_worker.ops import health
from billing_worker.providers import observed, sandbox
from billing_worker.providers.base import Gateways, PaymentGateway
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.providers.stripe.gateway import StripeGateway
from billing_worker.providers.yookassa.gateway import YooKassaGateway
from billing_worker.providers.yookassa.receipts import receipt_policy
from billing_worker.sampler import Sampler
from billing_worker.service import BillingService
from billing_worker.settings import Settings
from billing_worker.startup import StartupError, check_database, cluster_broker, connect_broker
from billing_worker.watchdog import Part, Watchdog, consumer_part, task_probe

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Worker:
    """Everything one worker process owns; tests reach in through it."""

    app: FastStream
    broker: RabbitBroker
    engine: AsyncEngine
    service: BillingService
    publisher: OutboxPublisher
    reconciler: Reconciler
    renewals: Renewals
    settings: Settings
    metrics: Metrics
    retention: Retention
    watchdog: Watchdog
    hold_expiry: HoldExpiry
    invoice_overdue: InvoiceOverdue
    routes: list[Route]


def build_gateways(settings: Settings) -> Gateways:
    """Stripe and YooKassa when their keys are set; the sandbox only when enabled."""
    gateways: dict[str, PaymentGateway] = {}
    if settings.sandbox_enabled:
        gateways["sandbox"] = SandboxGateway()
    timeout = settings.provider_timeout_seconds
    if settings.stripe_api_key:
        secret = settings.stripe_webhook_secret
        gateways["stripe"] = StripeGateway(
            settings.stripe_api_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            timeout=timeout,
            webhook_secret=secret.get_secret_value() if secret else None,
        )
    if settings.yookassa_account_id and settings.yookassa_secret_key:
        gateways["yookassa"] = YooKassaGateway(
            settings.yookassa_account_id,
            settings.yookassa_secret_key.get_secret_value(),
            api_url=settings.yookassa_api_url,
            timeout=timeout,
            setup_amount=(
                f"{settings.yookassa_setup_amount:.2f}",
                settings.yookassa_setup_currency,
            ),
        )
    return Gateways(gateways, default=settings.provider_for_deposits)


def build_worker(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    gateways: Gateways | None = None,
    metrics: Metrics | None = None,
) -> Worker:
    gateways = gateways or build_gateways(settings)
    metrics = metrics or Metrics()
    observed.attach(gateways, metrics.provider_calls)
    # Before the broker exists: its telemetry middleware takes the provider (tracing.py).
    tracer_provider = tracing.setup(settings)
    engine = create_engine(settings.database_dsn, pool_size=settings.db_pool_size)
    batch_engine = (  # the coalescers' own connections (BillingService.batch_lane)
        create_engine(settings.database_dsn, pool_size=batch_lanes())
        if settings.coalesce_max > 1
        else None
    )
    topology = topo.Topology.from_settings(settings)
    middlewares = tracing.telemetry_middlewares(tracer_provider)  # none when off
    if settings.metrics_port:  # FastStream's per-queue series, only when they are served
        middlewares.append(faststream_metrics(metrics.registry, topology))
    broker = cluster_broker(
        settings,
        default_channel=Channel(prefetch_count=settings.prefetch),
        log_level=logging.DEBUG,  # per-message framework logs cost ~20% (measured)
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=middlewares,
        apply_types=False,  # the pipeline validates bodies itself (see Pipeline.consumer)
    )
    worker_user = broker_login(settings.amqp_url)
    publisher = OutboxPublisher(
        engine,
        outbox_sender(broker, worker_user),
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval_ms / 1000,
        metrics=metrics,
    )
    deps = Deps(
        gateways=gateways,
        low_balance_threshold=settings.low_balance_threshold,
        dunning_days=settings.dunning_days,
        receipts=receipt_policy(settings),
    )

    def committed(uow: UnitOfWork, rows: int) -> None:
        publisher.committed(uow.flushed)  # published now, confirms awaited together
        metrics.committed(uow.transitions, uow.emitted)

    service = BillingService(engine, deps, clock, on_commit=committed, batch_engine=batch_engine)
    reconciler = Reconciler(
        engine,
        service,
        gateways,
        after_seconds=settings.reconcile_after_seconds,
        interval_seconds=settings.reconcile_interval_seconds,
        expire_after_seconds=settings.payment_expire_after_seconds,
    )
    renewals = Renewals(
        service, interval_seconds=settings.renewal_interval_seconds, metrics=metrics
    )
    retention = Retention(
        engine,
        record_days=settings.idempotency_retention_days,
        outbox_days=settings.outbox_retention_days,
        interval_seconds=settings.retention_interval_seconds,
        batch=settings.retention_batch_size,
        pause_seconds=settings.retention_pause_ms / 1000,
    )
    hold_expiry = HoldExpiry(
        service,
        interval_seconds=settings.hold_expiry_interval_seconds,
        batch=settings.hold_expiry_batch_size,
    )
    invoice_overdue = InvoiceOverdue(
        service,
        interval_seconds=settings.invoice_overdue_interval_seconds,
        batch=settings.invoice_overdue_batch_size,
    )
    pipeline = Pipeline(broker, topology, settings.max_deliveries, metrics, Access(worker_user))
    routes = all_routes(service, gateways, metrics, settings.coalesce_max)
    for route in routes:
        broker.subscriber(
            topology.queue_for(route.queue),
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            decoder=_message_itself,
            title=route.queue,
            description=route.description,
        )(pipeline.consumer(route))
    document_events(broker, topology)
    watchdog = Watchdog(
        interval=settings.watchdog_interval_seconds,
        max_restarts=settings.watchdog_max_restarts,
        window=settings.watchdog_restart_window_seconds,
        give_up=lambda _part: app.exit(),  # `billing-worker run` then exits non-zero
    )

    watchdog.watch(
        Part("outbox_publisher", task_probe(lambda: publisher.task), restarter(publisher.start))
    )
    watchdog.watch(
        Part("reconciler", task_probe(lambda: reconciler.task), restarter(reconciler.start))
    )
    watchdog.watch(Part("renewals", task_probe(lambda: renewals.task), restarter(renewals.start)))
    watchdog.watch(
        Part("retention", task_probe(lambda: retention.task), restarter(retention.start))
    )
    watchdog.watch(
        Part("hold_expiry", task_probe(lambda: hold_expiry.task), restarter(hold_expiry.start))
    )
    watchdog.watch(Part("invoice_overdue", task_probe(lambda: invoice_overdue.task),
                        restarter(invoice_overdue.start)))  # fmt: skip
    for route in routes:
        if route.coalescer is not None:
            watchdog.watch(Part(f"coalescer {route.queue}", route.coalescer.stalled,
                                restarter(route.coalescer.flush)))  # fmt: skip
    for subscriber in broker.subscribers:
        watchdog.watch(consumer_part(subscriber, broker, settings.watchdog_consumer_grace_seconds))
    internal: InternalServer | None = None
    sampler: Sampler | None = None
    if settings.metrics_port:  # the sampled gauges too, only when they are served
        sampler = Sampler(
            metrics,
            engine,
            lambda: broker._connection,
            [*health.command_queues(settings), health.DEAD_LETTER_QUEUE],
            stuck_after_seconds=health.stuck_after_seconds(settings),
            interval_seconds=settings.metrics_sample_seconds,
            amqp_url=settings.amqp_url,
        )
        checks = {"broker": lambda: broker.ping(timeout=2.0), "database": database_check(engine)}
        checks.update({name: watchdog.check(name) for name in watchdog.parts})
        internal = InternalServer(
            internal_app(metrics, checks), settings.metrics_host, settings.metrics_port
        )

    async def dispose_engines() -> None:
        await engine.dispose()
        if batch_engine is not None:
            await batch_engine.dispose()

    async def on_startup() -> None:
        try:
            await start_up()
        except BaseException:  # a refused start-up leaves nothing open behind it
            await broker.stop()  # else its connection would reconnect for ever
            await dispose_engines()
            raise

    async def start_up() -> None:
        # Before any subscriber starts: a bad policy file stops start-up (StartupError).
        pipeline.access = access_for(settings, worker_user, [route.queue for route in routes])
        await check_database(engine, settings)
        await load_service_keys(engine, gateways)
        await connect_broker(broker, settings)
        try:
            await topo.declare(broker, topology, urls=settings.amqp_urls)
        except ChannelPreconditionFailed as refused:  # a queue exists with other arguments
            raise StartupError(
                f"RabbitMQ refused the worker's topology: {str(refused).splitlines()[0]} "
                "(see the README, Running against a cluster)"
            ) from None
        if internal:
            await internal.start()

    async def after_startup() -> None:
        publisher.start()
        reconciler.start()
        renewals.start()
        retention.start()
        hold_expiry.start()
        invoice_overdue.start()
        if sampler:
            sampler.start()
        watchdog.start()
        log.info(
            "billing worker consuming (prefetch %d, providers %s, default %s)",
            settings.prefetch,
            ", ".join(gateways.names) or "none",
            gateways.default or "none",
        )
        if "sandbox" in gateways:
            log.warning("the sandbox provider is enabled: deposits can complete unpaid")
        if "stripe" in gateways and not settings.stripe_webhook_secret:
            log.warning(
                "BILLING_STRIPE_WEBHOOK_SECRET is not set: Stripe callbacks are not "
                "signature-checked by the worker (each is still re-read from Stripe)"
            )

    async def on_shutdown() -> None:
        log.info("billing worker stopping: finishing in-flight messages")
        await watchdog.stop()  # what stops from here on is meant to
        for subscriber in broker.subscribers:
            await subscriber.stop()  # cancels consuming, waits for in-flight handlers
        await reconciler.stop()
        await renewals.stop()
        await retention.stop()
        await hold_expiry.stop()
        await invoice_overdue.stop()
        if sampler:
            await sampler.stop()
        await publisher.stop()  # last drain while the broker is still connected

    async def after_shutdown() -> None:
        await dispose_engines()
        await gateways.close()
        tracing.shutdown()  # flushes the spans still batched
        if internal:
            await internal.stop()
        log.info("billing worker stopped")

    app = FastStream(
        broker,
        logger=logging.getLogger("billing_worker.app"),
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    return Worker(app, broker, engine, service, publisher, reconciler, renewals, settings, metrics,
                  retention, watchdog, hold_expiry, invoice_overdue, routes)  # fmt: skip


def restarter(start: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def restart() -> None:
        start()

    return restart


def access_for(settings: Settings, worker_user: str, queues: list[str]) -> Access:
    """The access check of consumed messages: the policy file's, or off (with a warning)."""
    if settings.access_policy is None:
        log.warning(
            "BILLING_ACCESS_POLICY is unset: any broker user may send any command, "
            "provider callback or order to this worker (see the README's Trust model); %s",
            "credits too (BILLING_CREDIT_WITHOUT_POLICY)"
            if settings.credit_without_policy
            else "credits are refused",
        )
        return Access(worker_user, privileged_without_policy=settings.credit_without_policy)
    policy = load_policy(settings.access_policy, queues)
    log.info(
        "access policy %s: %d broker users besides the worker's own (%s)",
        settings.access_policy, len(policy.users), worker_user,
    )  # fmt: skip
    return Access(worker_user, policy)


def outbox_sender(
    broker: RabbitBroker, worker_user: str
) -> Callable[[outbox.OutboxMessage], Awaitable[Any]]:
    """Publishes as the worker's broker user (validated user_id): a sandbox callback it
    sends itself is believed as the worker's, and events say who published them."""

    async def send(message: outbox.OutboxMessage) -> Any:
        with tracing.attached(message.headers):  # the trace of the command that wrote it
            return await broker.publish(
                message.body.encode(),
                exchange=message.exchange or None,
                routing_key=message.routing_key,
                message_id=str(message.event_id),
                message_type=message.type,
                headers=message.headers or None,
                content_type="application/json",
                user_id=worker_user,
                persist=True,
                mandatory=False,
            )

    return send


async def load_service_keys(engine: AsyncEngine, gateways: Gateways) -> None:
    """Give the sandbox(es) the callback key only the worker's database holds."""
    sandboxes = [
        gateway
        for gateway in map(gateways.get, gateways.names)
        if isinstance(gateway, sandbox.SandboxGateway)
    ]
    if not sandboxes:
        return
    async with driver_connection(engine) as db:
        secret = await db.fetchval(
            "SELECT secret FROM service_secrets WHERE name = $1", sandbox.SECRET_NAME
        )
    if not secret:
        raise StartupError("the database has no sandbox callback key: run `billing-worker migrate`")
    for gateway in sandboxes:
        gateway.use_key(secret.encode())


def database_check(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with driver_connection(engine) as db:
            return bool(await db.fetchval("SELECT true"))

    return check


async def _message_itself(message: Any) -> Any:
    """Hand the whole message to the pipeline: it validates the body against the contract
    itself and needs reply_to, headers and the ack."""
    return message


def document_events(broker: RabbitBroker, topology: topo.Topology) -> None:
    """Declare the events for the AsyncAPI document (the outbox publisher sends them)."""
    for event_type, model in EVENT_MODELS.items():
        broker.publisher(
            exchange=topology.events_exchange,
            routing_key=event_type,
            schema=EventEnvelope[model],  # type: ignore[valid-type]
            title=event_type,
            description=EVENT_PURPOSES[event_type],
            persist=True,
        )
