"""The relay when the broker is away: 503 (the provider retries), and /healthz says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from billing_worker.messaging import topology
from billing_worker.messaging.topology import Topology
from billing_worker.relay.runner import relay_broker
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from support import services
from support.relay import Relay
from support.settings import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def doomed_relay(database_url: str, rabbitmq_url: str) -> AsyncIterator[Relay]:
    """A relay connected to a vhost of its own, which the test can take away."""
    name = f"billing-test-relay-{uuid.uuid4().hex[:8]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("cannot manage vhosts on this broker")
    settings: Settings = make_settings(database_url, url, stripe_webhook_secret="whsec_test_secret")
    broker = relay_broker(settings)
    await broker.connect()
    await topology.declare(broker, Topology.from_settings(settings))  # as the worker does
    relay = Relay(settings, broker)
    relay.vhost = name  # type: ignore[attr-defined]
    yield relay
    await broker.stop()


async def test_the_relay_answers_200_then_503_once_the_broker_is_gone(doomed_relay: Relay) -> None:
    fake = FakeStripe()
    body = fake.event("payment_intent.succeeded", {"id": "pi_1", "object": "payment_intent"})
    async with doomed_relay.client() as client:
        assert (await client.get("/healthz")).json() == {"broker": "up"}
    assert (await doomed_relay.stripe(body)).status_code == 200

    services.delete_vhost(doomed_relay.vhost)  # type: ignore[attr-defined]

    response = await doomed_relay.stripe(fake.event("payment_intent.succeeded", {"id": "pi_2"}))
    assert response.status_code == 503
    assert response.json()["outcome"] == "broker_unavailable"
    async with doomed_relay.client() as client:
        health = await client.get("/healthz")
    assert health.status_code == 503
    assert [message_id for _, message_id in doomed_relay.published] == [json.loads(body)["id"]]


async def test_the_relay_refuses_stripe_callbacks_when_no_secret_is_configured(
    database_url: str, rabbitmq_url: str
) -> None:
    settings = make_settings(database_url, rabbitmq_url)
    broker = relay_broker(settings)
    relay = Relay(settings, broker)
    response = await relay.stripe(b"{}", **{"Stripe-Signature": "t=1,v1=00"})
    assert response.status_code == 404
