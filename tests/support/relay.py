"""The webhook relay served in-process for tests, recording what it published."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from faststream.rabbit import RabbitBroker

from billing_worker.relay.app import build_relay
from billing_worker.relay.runner import health_probe, publisher, relay_config
from billing_worker.settings import Settings
from fakes.stripe_api import sign

WEBHOOK_SECRET = "whsec_test_secret"
YOOKASSA_IP = "185.71.76.10"  # inside YooKassa's published 185.71.76.0/27


@dataclass
class Relay:
    """The relay app served in-process, with every publish it made recorded."""

    settings: Settings
    broker: RabbitBroker
    published: list[tuple[str, str]] = field(default_factory=list)

    def client(self, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        send = publisher(self.broker)

        async def publish(body: bytes, provider: str, message_id: str) -> None:
            await send(body, provider, message_id)
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
