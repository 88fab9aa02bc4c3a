"""Wiring of the relay process: settings -> broker -> Starlette app -> uvicorn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from aio_pika.abc import HeadersType
from faststream.rabbit import Channel, RabbitBroker
from starlette.applications import Starlette

from billing_contracts import names
from billing_worker import tracing
from billing_worker.access import broker_login
from billing_worker.messaging.topology import PROVIDER_CALLBACKS
from billing_worker.metrics import Metrics
from billing_worker.observability import InternalServer, internal_app
from billing_worker.providers.yookassa import webhook as yookassa_webhooks
from billing_worker.relay.addresses import networks
from billing_worker.relay.app import Publish, RelayConfig, build_relay
from billing_worker.relay.deadlines import head_deadline_protocol
from billing_worker.settings import Settings
from billing_worker.startup import cluster_broker, connect_broker, listen_socket

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 5.0
HEALTH_PROBE_ROUTING_KEY = "health-probe"  # bound to nothing on the callbacks exchange


def relay_config(settings: Settings) -> RelayConfig:
    secret = settings.stripe_webhook_secret
    return RelayConfig(
        stripe_secret=secret.get_secret_value() if secret else None,
        stripe_tolerance=settings.stripe_webhook_tolerance_seconds,
        yookassa_sources=networks(yookassa_webhooks.sources(settings.yookassa_allowed_networks)),
        trusted_proxies=networks(settings.trusted_proxies),
        body_timeout=settings.relay_body_timeout_seconds,
    )


def relay_broker(settings: Settings) -> RabbitBroker:
    return cluster_broker(
        settings,
        default_channel=Channel(on_return_raises=True),  # an unroutable callback is an error
        log_level=logging.DEBUG,
        # The webhook's trace context into the callback's headers (when tracing is on).
        middlewares=tracing.telemetry_middlewares(tracing.provider()),
    )


def publisher(broker: RabbitBroker, user_id: str | None = None) -> Publish:
    """Publishes to the callbacks exchange, the only thing the relay's broker user needs
    to be allowed to write (the exchange is looked up passively, never declared).

    `user_id` is the relay's broker login: RabbitMQ validates it, and the worker's
    access policy admits callbacks by it.
    """

    async def publish(
        body: bytes, provider: str, message_id: str, signature: str | None = None
    ) -> None:
        headers: HeadersType = {names.PROVIDER_HEADER: provider}
        if signature is not None:
            headers[names.PROVIDER_SIGNATURE_HEADER] = signature
        await broker.publish(
            body,
            exchange=PROVIDER_CALLBACKS,
            routing_key=names.PROVIDER_CALLBACK_ROUTING_KEY,
            headers=headers,
            message_id=message_id,
            user_id=user_id,
            content_type="application/json",
            persist=True,
            mandatory=True,
            timeout=PUBLISH_TIMEOUT,
        )

    return publish


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down, so the
    process would end as "killed by a signal"; a graceful stop is a clean exit."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def health_probe(broker: RabbitBroker) -> Callable[[], Awaitable[bool]]:
    """Healthy means a publish to the callbacks exchange is confirmed right now (the
    connection flag lags behind). Its routing key routes nowhere, so the probe needs no
    permission beyond the callbacks' own and leaves nothing behind."""

    async def healthy() -> bool:
        try:
            await broker.publish(
                b"",
                exchange=PROVIDER_CALLBACKS,
                routing_key=HEALTH_PROBE_ROUTING_KEY,
                mandatory=False,
                timeout=2.0,
            )
        except Exception:
            return False
        return True

    return healthy


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """The listener, with a deadline for every request head (`deadlines`), a cap on open
    connections (503 beyond it) and a bounded keep-alive."""
    return uvicorn.Config(
        app,
        host=settings.relay_host,
        port=settings.relay_port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is judged by our own trusted-proxy rule
        lifespan="off",
        http=head_deadline_protocol(settings.relay_header_timeout_seconds),
        ws="none",  # an upgraded connection would leave the protocol and its deadline
        limit_concurrency=settings.relay_max_connections,
        timeout_keep_alive=settings.relay_keep_alive_seconds,
    )


async def serve(settings: Settings) -> None:
    # Bound first, by us rather than uvicorn: a taken port is a one-line StartupError
    # before any broker connection is tried, and "listening" is logged once it is true.
    listener = listen_socket(settings.relay_host, settings.relay_port, "BILLING_RELAY_PORT")
    broker = relay_broker(settings)
    internal = None
    try:
        # Nothing is declared here: the relay's broker user may have no configure
        # permission. Until a worker has declared its topology, callbacks are
        # unroutable: 503, and the provider retries.
        await connect_broker(broker, settings)
        metrics = Metrics()
        probe = health_probe(broker)
        sender = publisher(broker, broker_login(settings.amqp_url))
        app = build_relay(relay_config(settings), sender, probe, metrics)
        if settings.metrics_port:
            internal = InternalServer(
                internal_app(metrics, {"broker": probe}),
                settings.metrics_host,
                settings.metrics_port,
            )
            await internal.start()
        config = uvicorn_config(app, settings)
        log.info("webhook relay listening on %s:%d", settings.relay_host, settings.relay_port)
        await _GracefulServer(config).serve(sockets=[listener])
    finally:
        listener.close()
        if internal:
            await internal.stop()
        await broker.stop()


def run(settings: Settings) -> None:
    tracing.setup(settings, role="relay")  # before the broker: its middleware takes it
    try:
        asyncio.run(serve(settings))
    finally:
        tracing.shutdown()  # flushes the spans still batched
