"""The webhook relay served in-process for tests, recording what it published."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from faststream.rabbit import RabbitBroker

from billing_worker.access import broker_login
from billing_worker.relay.app import build_relay
from billing_worker.relay.runner import health_probe, publisher, relay_config
from billing_worker.settings import Settings
from fakes.stripe_api import sign
from support import broker_admin

WEBHOOK_SECRET = "whsec_test_secret"
YOOKASSA_IP = "185.71.76.10"  # inside YooKassa's published 185.71.76.0/27


@dataclass
class Relay:
    """The relay app served in-process, with every publish it made recorded."""

    settings: Settings
    broker: RabbitBroker
    published: list[tuple[str, str]] = field(default_factory=list)

    def client(self, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        send = publisher(self.broker, broker_login(self.settings.amqp_url))

        async def publish(
            body: bytes, provider: str, message_id: str, signature: str | None = None
        ) -> None:
            await send(body, provider, message_id, signature)
            self.published.append((provider, message_id))

        app = build_relay(relay_config(self.settings), publish, health_probe(self.broker))
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://relay")

    async def stripe(self, body: bytes, **headers: str) -> httpx.Response:
        async with self.client() as client:
            return await client.post(
                "/webhooks/stripe",
                content=body,
                headers=headers or {"Stripe-Signature": sign(body, WEBHOOK_SECRET)},
            )

    async def yookassa(
        self, body: bytes, peer: str = YOOKASSA_IP, **headers: str
    ) -> httpx.Response:
        async with self.client(peer) as client:
            return await client.post("/webhooks/yookassa", content=body, headers=headers)


@contextlib.contextmanager
def broker_user(vhost_url: str, *, configure: str, write: str, read: str) -> Iterator[str]:
    """A throwaway RabbitMQ user with only these permissions on the vhost of `vhost_url`;
    yields its URL and deletes the user afterwards (`broker_admin`, as for vhosts)."""
    parts = urlsplit(vhost_url)
    vhost = unquote(parts.path.removeprefix("/")) or "/"
    user = f"billing-test-{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    broker_admin.add_user(user, password)
    try:
        broker_admin.set_permissions(vhost, user, configure, write, read)
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5672}"
        yield urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    finally:
        broker_admin.delete_user(user)
