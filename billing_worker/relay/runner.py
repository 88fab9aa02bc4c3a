"""Wiring of the relay process: settings -> broker -> Starlette app -> uvicorn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from faststream.rabbit import Channel, RabbitBroker

from billing_contracts import names
from billing_worker.messaging.topology import Topology
from billing_worker.metrics import Metrics
from billing_worker.observability import InternalServer, internal_app
from billing_worker.relay.app import Publish, RelayConfig, build_relay
from billing_worker.relay.verify import networks
from billing_worker.settings import Settings
from billing_worker.startup import connect_broker

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 5.0


def relay_config(settings: Settings) -> RelayConfig:
    secret = settings.stripe_webhook_secret
    return RelayConfig(
        stripe_secret=secret.get_secret_value() if secret else None,
        stripe_tolerance=settings.stripe_webhook_tolerance_seconds,
        yookassa_sources=networks(settings.yookassa_allowed_networks),
        trusted_proxies=networks(settings.trusted_proxies),
    )


def relay_broker(settings: Settings) -> RabbitBroker:
    return RabbitBroker(
        settings.amqp_url,
        default_channel=Channel(on_return_raises=True),  # an unroutable callback is an error
        log_level=logging.DEBUG,
    )


def publisher(broker: RabbitBroker) -> Publish:
    async def publish(body: bytes, provider: str, message_id: str) -> None:
        await broker.publish(
            body,
            routing_key=names.PROVIDER_EVENTS_QUEUE,
            headers={names.PROVIDER_HEADER: provider},
            message_id=message_id,
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
    """Healthy means a publish is confirmed right now (the connection flag lags behind)."""

    async def healthy() -> bool:
        try:
            await broker.publish(
                b"", routing_key="billing.relay.health-probe", mandatory=False, timeout=2.0
            )
        except Exception:
            return False
        return True

    return healthy


async def serve(settings: Settings) -> None:
    broker = relay_broker(settings)
    await connect_broker(broker, settings)
    # Declared here too, so callbacks are kept even before the first worker starts.
    await broker.declare_queue(Topology.from_settings(settings).provider_events)

    metrics = Metrics()
    probe = health_probe(broker)
    app = build_relay(relay_config(settings), publisher(broker), probe, metrics)
    internal = None
    if settings.metrics_port:
        internal = InternalServer(
            internal_app(metrics, {"broker": probe}), settings.metrics_host, settings.metrics_port
        )
        await internal.start()
    config = uvicorn.Config(
        app,
        host=settings.relay_host,
        port=settings.relay_port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is judged by our own trusted-proxy rule
        lifespan="off",
    )
    log.info("webhook relay listening on %s:%d", settings.relay_host, settings.relay_port)
    try:
        await _GracefulServer(config).serve()
    finally:
        if internal:
            await internal.stop()
        await broker.stop()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
