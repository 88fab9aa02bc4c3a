"""`billing-worker relay`: POST /webhooks/stripe, POST /webhooks/yookassa, GET /healthz.

It answers 2xx only after RabbitMQ confirmed a persistent copy of the callback on
`billing.provider-events`; while the broker is away it answers 503 and the provider
retries. It holds no database connection and no secret beyond the webhook secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_worker.metrics import Metrics
from billing_worker.relay import verify

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
Publish = Callable[[bytes, str, str], Awaitable[None]]  # body, provider, message id
Healthy = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RelayConfig:
    stripe_secret: str | None
    stripe_tolerance: int
    yookassa_sources: tuple[verify.IPNetwork, ...]
    trusted_proxies: tuple[verify.IPNetwork, ...]


class TooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    """The raw body, refusing more than 1 MiB without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        chunks.append(chunk)
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
        return JSONResponse({"outcome": outcome, "detail": detail}, status_code=status)

    async def forward(body: bytes, provider: str, message_id: str) -> Response:
        try:
            await publish(body, provider, message_id)
        except Exception as error:  # broker away or no confirm: the provider will retry
            return answer(provider, 503, "broker_unavailable", type(error).__name__)
        return answer(provider, 200, "queued", message_id)

    async def stripe_webhook(request: Request) -> Response:
        if not config.stripe_secret:
            return answer(
                "stripe", 404, "not_configured", "BILLING_STRIPE_WEBHOOK_SECRET is not set"
            )
        try:
            body = await read_body(request)
            verify.verify_stripe(
                body, request.headers.get("stripe-signature"), config.stripe_secret,
                config.stripe_tolerance,
            )  # fmt: skip
            event_id = message_id(json.loads(body)["id"])
        except TooLarge:
            return answer("stripe", 413, "too_large")
        except verify.Forged as forged:
            return answer("stripe", 400, "forged", str(forged))
        except (ValueError, KeyError, TypeError, RecursionError):  # Recursion: too deeply nested
            return answer("stripe", 400, "malformed", "not a Stripe event")
        return await forward(body, "stripe", event_id)

    async def yookassa_webhook(request: Request) -> Response:
        peer = request.client.host if request.client else None
        address = verify.client_address(
            peer, request.headers.get("x-forwarded-for"), config.trusted_proxies
        )
        if not verify.allowed(address, config.yookassa_sources):
            return answer("yookassa", 403, "forbidden_source", address)
        try:
            body = await read_body(request)
            notification = json.loads(body)
            if notification.get("type") != "notification":
                raise ValueError("not a notification")
            event_id = message_id(f"{notification['event']}:{notification['object']['id']}")
        except TooLarge:
            return answer("yookassa", 413, "too_large")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return answer("yookassa", 400, "malformed", "not a YooKassa notification")
        return await forward(body, "yookassa", event_id)

    async def healthz(request: Request) -> Response:
        ok = await healthy()
        return JSONResponse({"broker": "up" if ok else "down"}, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
            Route("/webhooks/yookassa", yookassa_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
