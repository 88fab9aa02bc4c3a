"""`billing-worker relay`: POST /webhooks/stripe, POST /webhooks/yookassa, GET /healthz.

It answers 2xx only after RabbitMQ confirmed a persistent copy of the callback, published
to `billing.provider-callbacks` and routed to `billing.provider-events`; while the broker
is away (or nothing is bound yet) it answers 503 and the provider retries. It holds no
database connection and no secret beyond the webhook secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_worker import tracing
from billing_worker.metrics import Metrics
from billing_worker.providers.base import Forged
from billing_worker.providers.stripe import webhook as stripe_webhooks
from billing_worker.providers.yookassa import webhook as yookassa_webhooks
from billing_worker.relay import addresses

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
# body, provider, message id, the provider's signature header (forwarded verbatim) if any
Publish = Callable[[bytes, str, str, str | None], Awaitable[None]]
Healthy = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RelayConfig:
    stripe_secret: str | None
    stripe_tolerance: int
    yookassa_sources: tuple[addresses.IPNetwork, ...]
    trusted_proxies: tuple[addresses.IPNetwork, ...]
    body_timeout: float = 10.0


class TooLarge(Exception):
    pass


class TooSlow(Exception):
    pass


async def read_body(request: Request, deadline: float) -> bytes:
    """The raw body, refusing more than 1 MiB without reading it all, and a body that
    has not arrived in full within `deadline` seconds (a slow client holds a connection
    and up to 1 MiB of buffers for as long as it is let)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise TooLarge
    chunks, size = [], 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise TooLarge
                chunks.append(chunk)
    except TimeoutError:
        raise TooSlow from None
    return b"".join(chunks)


def message_id(value: object) -> str:
    """The provider's event id, if it can travel as the AMQP message id (a short string of
    at most 255 bytes); otherwise the callback is malformed, not the broker unavailable."""
    text = str(value)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate
        raise ValueError("the event id is not valid text") from None
    if not 0 < size <= 255:
        raise ValueError("the event id must be 1 to 255 bytes long")
    return text


def traced(
    provider: str, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """A SERVER span per webhook (billing_worker/tracing.py; nothing when off), continuing
    a `traceparent` the request carries (an ingress may set one). The callback is
    published inside it, so the worker's handling of it is part of the same trace."""

    async def handle(request: Request) -> Response:
        with (
            tracing.attached(request.headers),
            tracing.span(
                f"webhook {provider}",
                {"billing.provider": provider, "http.request.method": request.method},
                kind=SpanKind.SERVER,
            ) as span,
        ):
            response = await handler(request)
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
            return response

    return handle


def build_relay(
    config: RelayConfig, publish: Publish, healthy: Healthy, metrics: Metrics | None = None
) -> Starlette:
    counted = metrics or Metrics()

    def answer(provider: str, status: int, outcome: str, detail: str = "") -> Response:
        counted.webhooks.labels(provider, outcome).inc()
        log.log(
            logging.INFO if status < 400 else logging.WARNING,
            "webhook %s %s: %s %s", provider, status, outcome, detail,
            extra={"provider": provider, "status": status, "outcome": outcome},
        )  # fmt: skip
        # A request whose body was not read in full leaves the connection unusable.
        close = {"connection": "close"} if status in (408, 413) else None
        return JSONResponse(
            {"outcome": outcome, "detail": detail}, status_code=status, headers=close
        )

    async def forward(
        body: bytes, provider: str, message_id: str, signature: str | None = None
    ) -> Response:
        try:
            await publish(body, provider, message_id, signature)
        except Exception as error:  # broker away or no confirm: the provider will retry
            return answer(provider, 503, "broker_unavailable", type(error).__name__)
        return answer(provider, 200, "queued", message_id)

    async def stripe_webhook(request: Request) -> Response:
        if not config.stripe_secret:
            return answer(
                "stripe", 404, "not_configured", "BILLING_STRIPE_WEBHOOK_SECRET is not set"
            )
        try:
            body = await read_body(request, config.body_timeout)
            signatures = request.headers.getlist("stripe-signature")
            if len(signatures) > 1:  # which one would the worker check again?
                raise Forged("more than one Stripe-Signature header")
            signature = signatures[0] if signatures else None
            stripe_webhooks.verify_signature(
                body, signature, config.stripe_secret, config.stripe_tolerance
            )
            event_id = message_id(stripe_webhooks.event_id(body))
        except TooLarge:
            return answer("stripe", 413, "too_large")
        except TooSlow:
            return answer("stripe", 408, "too_slow", "the body did not arrive in time")
        except Forged as forged:
            return answer("stripe", 400, "forged", str(forged))
        except (ValueError, KeyError, TypeError, RecursionError):  # Recursion: too deeply nested
            return answer("stripe", 400, "malformed", "not a Stripe event")
        return await forward(body, "stripe", event_id, signature)

    async def yookassa_webhook(request: Request) -> Response:
        peer = request.client.host if request.client else None
        address = addresses.client_address(
            peer, request.headers.getlist("x-forwarded-for"), config.trusted_proxies
        )
        if not addresses.allowed(address, config.yookassa_sources):
            return answer("yookassa", 403, "forbidden_source", address)
        try:
            body = await read_body(request, config.body_timeout)
            event_id = message_id(yookassa_webhooks.event_id(body))
        except TooLarge:
            return answer("yookassa", 413, "too_large")
        except TooSlow:
            return answer("yookassa", 408, "too_slow", "the body did not arrive in time")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return answer("yookassa", 400, "malformed", "not a YooKassa notification")
        return await forward(body, "yookassa", event_id)

    async def healthz(request: Request) -> Response:
        ok = await healthy()
        return JSONResponse({"broker": "up" if ok else "down"}, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/webhooks/stripe", traced("stripe", stripe_webhook), methods=["POST"]),
            Route("/webhooks/yookassa", traced("yookassa", yookassa_webhook), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
