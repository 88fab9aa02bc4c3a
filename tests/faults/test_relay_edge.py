"""Attacks on the relay's edges, each reproduced: how it reaches the broker (a dedicated
exchange, a least-privilege user), what it forwards (the raw Stripe signature), whom it
believes (X-Forwarded-For, IPv4-mapped addresses) and which timestamps it accepts.

The relay app is served in-process (httpx.ASGITransport) against a RabbitMQ vhost of the
test's own; the worker's topology is declared there by an administrator's connection.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest
from faststream.rabbit import RabbitBroker

from billing_contracts import names
from billing_worker.messaging import topology
from billing_worker.messaging.topology import Topology
from billing_worker.relay.app import build_relay
from billing_worker.relay.runner import health_probe, publisher, relay_broker, relay_config
from billing_worker.settings import Settings
from fakes.stripe_api import sign
from support.relay import broker_user
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRET = "whsec_edge_secret"
TOLERANCE = 300
YOOKASSA_IP = "185.71.76.10"  # inside 185.71.76.0/27
FOREIGN_IP = "203.0.113.9"
PROXY = "10.1.2.3"  # inside the trusted 10.0.0.0/8
UNUSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/unused"  # the relay has none


def relay_settings(amqp_url: str) -> Settings:
    return make_settings(
        UNUSED_DATABASE,
        amqp_url,
        stripe_webhook_secret=SECRET,
        stripe_webhook_tolerance_seconds=TOLERANCE,
        trusted_proxies=("10.0.0.0/8",),
    )


@pytest.fixture
async def declared(vhost_url: str) -> AsyncIterator[RabbitBroker]:
    """The worker's topology, declared on the test's vhost by an administrator."""
    admin = RabbitBroker(vhost_url)
    await admin.connect()
    await topology.declare(admin, Topology.from_settings(relay_settings(vhost_url)))
    yield admin
    await admin.stop()


@pytest.fixture
async def relay(vhost_url: str, declared: RabbitBroker) -> AsyncIterator[Any]:
    settings = relay_settings(vhost_url)
    broker = relay_broker(settings)
    await broker.connect()
    yield build_relay(relay_config(settings), publisher(broker), health_probe(broker))
    await broker.stop()


def client(app: Any, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://relay")


def stripe_event() -> bytes:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": f"pi_{uuid.uuid4().hex}"}},
        }
    ).encode()


def notification() -> bytes:
    return json.dumps(
        {
            "type": "notification",
            "event": "payment.succeeded",
            "object": {"id": f"yk_{uuid.uuid4().hex}"},
        }
    ).encode()


async def drain(url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now on billing.provider-events (the queue is emptied)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(names.PROVIDER_EVENTS_QUEUE)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(message)
        return found
    finally:
        await connection.close()


# --------------------------------------------------------------- exchange and signature


async def test_a_stripe_callback_travels_on_the_callbacks_exchange_with_its_raw_signature(
    relay: Any, vhost_url: str
) -> None:
    body = stripe_event() + b"  \n"  # trailing bytes are part of what Stripe signed
    signature = sign(body, SECRET)
    async with client(relay) as http:
        response = await http.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": signature}
        )
        assert response.status_code == 200, response.text
        assert (await http.get("/healthz")).json() == {"broker": "up"}

    [message] = await drain(vhost_url)
    assert message.exchange == names.PROVIDER_CALLBACKS_EXCHANGE
    assert message.routing_key == names.PROVIDER_CALLBACK_ROUTING_KEY
    assert message.body == body
    assert message.headers[names.PROVIDER_HEADER] == "stripe"
    assert message.headers[names.PROVIDER_SIGNATURE_HEADER] == signature
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == json.loads(body)["id"]


async def test_a_yookassa_notification_travels_on_the_callbacks_exchange_unsigned(
    relay: Any, vhost_url: str
) -> None:
    body = notification()
    async with client(relay, YOOKASSA_IP) as http:
        assert (await http.post("/webhooks/yookassa", content=body)).status_code == 200
    [message] = await drain(vhost_url)
    assert message.exchange == names.PROVIDER_CALLBACKS_EXCHANGE
    assert message.body == body
    assert message.headers[names.PROVIDER_HEADER] == "yookassa"
    assert names.PROVIDER_SIGNATURE_HEADER not in message.headers


async def test_two_stripe_signature_lines_are_refused(relay: Any, vhost_url: str) -> None:
    """Which one would the worker check again? Neither: the callback is forged."""
    body = stripe_event()
    lines = [("Stripe-Signature", sign(body, SECRET)), ("Stripe-Signature", "t=1,v1=00")]
    async with client(relay) as http:
        response = await http.post("/webhooks/stripe", content=body, headers=lines)
    assert response.status_code == 400
    assert await drain(vhost_url) == []


async def test_a_relay_user_that_may_only_write_the_callbacks_exchange_is_enough(
    vhost_url: str,
) -> None:
    """No configure and no read permission, write on the callbacks exchange only. Until the
    worker bound its queue a callback is unroutable (503, the provider retries); after
    that it is queued. The health probe works with the same permission throughout."""
    admin = RabbitBroker(vhost_url)
    await admin.connect()
    with broker_user(
        vhost_url, configure="^$", write=r"^billing\.provider-callbacks$", read="^$"
    ) as url:
        settings = relay_settings(url)
        broker = relay_broker(settings)
        await broker.connect()
        app = build_relay(relay_config(settings), publisher(broker), health_probe(broker))
        try:
            async with client(app) as http:
                # Nothing declared at all: no exchange to publish to.
                assert (await http.get("/healthz")).status_code == 503
                nowhere = await http.post(
                    "/webhooks/stripe",
                    content=(body := stripe_event()),
                    headers={"Stripe-Signature": sign(body, SECRET)},
                )
                assert nowhere.status_code == 503
                assert nowhere.json()["outcome"] == "broker_unavailable"

                # The exchange exists, nothing is bound to it yet.
                await admin.declare_exchange(Topology.from_settings(settings).provider_callbacks)
                assert (await http.get("/healthz")).json() == {"broker": "up"}
                unbound = await http.post(
                    "/webhooks/stripe",
                    content=(body := stripe_event()),
                    headers={"Stripe-Signature": sign(body, SECRET)},
                )
                assert unbound.status_code == 503

                # The worker declared its topology.
                await topology.declare(admin, Topology.from_settings(settings))
                queued = await http.post(
                    "/webhooks/stripe",
                    content=(body := stripe_event()),
                    headers={"Stripe-Signature": sign(body, SECRET)},
                )
                assert queued.status_code == 200, queued.text
                assert (await http.get("/healthz")).json() == {"broker": "up"}
        finally:
            await broker.stop()
    await admin.stop()
    assert [message.body for message in await drain(vhost_url)] == [body]


# ------------------------------------------------------------------------ source address


@pytest.mark.parametrize(
    ("peer", "lines", "expected"),
    [
        # The client sends its own line; the trusted proxy appends one with the real
        # client address. The two lines are one list: the right-most untrusted hop counts.
        (PROXY, [YOOKASSA_IP, FOREIGN_IP], 403),
        (PROXY, [f"{YOOKASSA_IP}, {FOREIGN_IP}", f"{PROXY}"], 403),
        (PROXY, [FOREIGN_IP, YOOKASSA_IP], 200),
        (PROXY, [FOREIGN_IP, f"{YOOKASSA_IP}, 10.9.9.9"], 200),
        # IPv4-mapped IPv6 forms are judged like their IPv4 form.
        (PROXY, [f"::ffff:{YOOKASSA_IP}"], 200),
        (PROXY, [f"::ffff:{FOREIGN_IP}"], 403),
        (PROXY, [f"{FOREIGN_IP}, ::ffff:{YOOKASSA_IP}, ::ffff:10.9.9.9"], 200),
        (PROXY, [f"{YOOKASSA_IP}, ::ffff:{FOREIGN_IP}"], 403),
        (f"::ffff:{YOOKASSA_IP}", [], 200),
        (f"::ffff:{FOREIGN_IP}", [], 403),
        (f"::ffff:{FOREIGN_IP}", [YOOKASSA_IP], 403),  # an untrusted peer's line is ignored
        (f"::ffff:{PROXY}", [YOOKASSA_IP], 200),  # a trusted proxy, however it is spelled
        (f"::ffff:{PROXY}", [FOREIGN_IP], 403),
    ],
)
async def test_the_source_address_is_the_right_most_untrusted_hop_of_all_lines(
    relay: Any, vhost_url: str, peer: str, lines: list[str], expected: int
) -> None:
    body = notification()
    headers = [("X-Forwarded-For", line) for line in lines]
    async with client(relay, peer) as http:
        response = await http.post("/webhooks/yookassa", content=body, headers=headers)
    assert response.status_code == expected, response.text
    assert len(await drain(vhost_url)) == (1 if expected == 200 else 0)


# ---------------------------------------------------------------------- Stripe timestamp


def signed_at(body: bytes, stamp: int) -> tuple[str, str]:
    """(timestamp text as signed, v1 digest) in Stripe's scheme."""
    return str(stamp), sign(body, SECRET, stamp).split(",v1=")[1]


@pytest.mark.parametrize(
    "form",
    [
        "t=+{future},v1={future_sig}",  # int() takes a sign
        "t={future} ,v1={future_sig}",  # ...and surrounding spaces
        "t= {future},v1={future_sig}",
        "t={future}\t,v1={future_sig}",
        "t={now},t={future},v1={now_sig}",  # two timestamps: which one is checked?
        "t={future},t={now},v1={future_sig}",
        "t=0{now},v1={now_sig}",  # a leading zero: not the text that was signed
        "t={future_grouped},v1={future_sig}",  # int() takes "1_700_000_000" too
        "t={huge},v1={huge_sig}",  # absurdly long
    ],
)
async def test_a_stripe_timestamp_that_is_not_plain_ascii_digits_is_forged(
    relay: Any, vhost_url: str, form: str
) -> None:
    body = stripe_event()
    now = int(time.time())
    future = now + TOLERANCE + 3600
    huge = 10**30
    values = {
        "now": str(now),
        "future_grouped": f"{future:_}",
        "future": str(future),
        "huge": str(huge),
        "now_sig": signed_at(body, now)[1],
        "future_sig": signed_at(body, future)[1],
        "huge_sig": signed_at(body, huge)[1],
    }
    header = form.format(**values)
    async with client(relay) as http:
        response = await http.post(
            "/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
        )
    assert response.status_code == 400, response.text
    assert response.json()["outcome"] == "forged"
    assert await drain(vhost_url) == []


async def test_a_plainly_signed_stripe_timestamp_within_the_tolerance_is_accepted(
    relay: Any, vhost_url: str
) -> None:
    """The control for the test above: only the timestamp's form is at fault there."""
    body = stripe_event()
    stamp = int(time.time()) + TOLERANCE // 2
    async with client(relay) as http:
        response = await http.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sign(body, SECRET, stamp)},
        )
    assert response.status_code == 200, response.text
    assert len(await drain(vhost_url)) == 1
