"""The webhook relay under hostile callers: malformed, oversize, replayed and forged
webhooks, generated with hypothesis and sent in-process (httpx.ASGITransport).

The relay must answer 200 exactly for genuine callbacks (and queue each of them), 400
for a bad signature or body, 403 for a YooKassa caller outside its ranges, 413 over
1 MiB, and never fail with a 5xx of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
from hypothesis import strategies as st

from billing_contracts import names
from billing_worker.messaging import topology
from billing_worker.messaging.topology import Topology
from billing_worker.relay.app import build_relay
from billing_worker.relay.runner import health_probe, publisher, relay_broker, relay_config
from billing_worker.settings import Settings
from fakes.stripe_api import sign
from support.figures import record
from support.hostile import any_json, draw, unicode_text
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRET = "whsec_faults_secret"
TOLERANCE = 300
YOOKASSA_IP = "185.71.76.10"
PROXY = "10.1.2.3"  # inside the trusted 10.0.0.0/8
EXAMPLES = 120


@dataclass
class Call:
    what: str
    path: str
    body: bytes
    headers: dict[str, str]
    peer: str
    expected: int

    def describe(self) -> str:
        return f"{self.what} {self.path} {self.headers} {self.body[:200]!r}"


@pytest.fixture
def settings(database_url: str, vhost_url: str) -> Settings:
    return make_settings(
        database_url,
        vhost_url,
        stripe_webhook_secret=SECRET,
        stripe_webhook_tolerance_seconds=TOLERANCE,
        trusted_proxies=("10.0.0.0/8",),
    )


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[Any]:
    broker = relay_broker(settings)
    await broker.connect()
    await topology.declare(broker, Topology.from_settings(settings))  # as the worker does
    yield build_relay(relay_config(settings), publisher(broker), health_probe(broker))
    await broker.stop()


def carriable(event_id: object) -> bool:
    """An id that can be the AMQP message id (and the worker's dedupe key): 1-255 bytes."""
    try:
        return 0 < len(str(event_id).encode()) <= 255
    except UnicodeEncodeError:
        return False


def stripe_accepts(body: bytes) -> bool:
    """A signed body the relay must queue: UTF-8 JSON, an object, with a usable `id`."""
    try:
        event = json.loads(body.decode())
    except (ValueError, RecursionError):
        return False
    return isinstance(event, dict) and "id" in event and carriable(event["id"])


def yookassa_accepts(body: bytes) -> bool:
    try:
        notification = json.loads(body)
        if not isinstance(notification, dict) or notification.get("type") != "notification":
            return False
        return carriable(f"{notification['event']}:{notification['object']['id']}")
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return False


def header(body: bytes, *, secret: str = SECRET, at: int | None = None, scheme: str = "v1") -> str:
    stamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},{scheme}={digest}"


def event(**fields: Any) -> bytes:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": f"pi_{uuid.uuid4().hex}"}},
            **fields,
        }
    ).encode()


DEEP = b"[" * 10_000 + b"]" * 10_000
stripe_bodies = st.one_of(
    any_json.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.text(max_size=10), any_json, max_size=4).map(
        lambda extra: json.dumps({"id": f"evt_{uuid.uuid4().hex}", **extra}).encode()
    ),
    unicode_text.map(lambda text: json.dumps({"id": text, "type": "x"}).encode()),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b'{"id": NaN}',
            b'{"id": Infinity, "type": "x"}',
            DEEP,
            b'{"id": ' + DEEP + b"}",
            b'{"type": "x", "data": ' + DEEP + b"}",
            b"\xff\xfe{}",
            '{"id": "\u00e9"}'.encode("utf-16"),
            b'{"id": "x"}' + b" " * 300_000,
        ]
    ),
)


@st.composite
def forged(draw_: st.DrawFn) -> tuple[str, dict[str, str]]:
    """(what, headers) for a genuine event body that is not signed by us, or not now."""
    now = int(time.time())
    kind = draw_(
        st.sampled_from(
            [
                "missing",
                "garbage",
                "wrong_secret",
                "stale",
                "future",
                "v0_scheme",
                "other_body",
                "empty_signature",
                "many_wrong",
                "uppercase_hex",
            ]
        )
    )
    headers = {
        "missing": {},
        "garbage": {
            "Stripe-Signature": draw_(
                st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
            )
        },
        "wrong_secret": {"Stripe-Signature": "@sign:whsec_other"},
        "stale": {
            "Stripe-Signature": f"@sign_at:{now - draw_(st.integers(TOLERANCE + 30, 10**7))}"
        },
        "future": {
            "Stripe-Signature": f"@sign_at:{now + draw_(st.integers(TOLERANCE + 30, 10**7))}"
        },
        "v0_scheme": {"Stripe-Signature": "@sign_v0"},
        "other_body": {"Stripe-Signature": header(b'{"id": "evt_other"}')},
        "empty_signature": {"Stripe-Signature": f"t={now},v1="},
        "many_wrong": {
            "Stripe-Signature": f"t={now},"
            + ",".join(f"v1={uuid.uuid4().hex * 2}" for _ in range(draw_(st.integers(1, 20))))
        },
        "uppercase_hex": {"Stripe-Signature": "@sign_upper"},
    }[kind]
    return kind, headers


def resolve(headers: dict[str, str], body: bytes) -> dict[str, str]:
    value = headers.get("Stripe-Signature", "")
    if value.startswith("@sign:"):
        return {"Stripe-Signature": header(body, secret=value.removeprefix("@sign:"))}
    if value.startswith("@sign_at:"):
        return {"Stripe-Signature": header(body, at=int(value.removeprefix("@sign_at:")))}
    if value == "@sign_v0":
        return {"Stripe-Signature": header(body, scheme="v0")}
    if value == "@sign_upper":
        stamp, digest = header(body).split(",v1=")
        return {"Stripe-Signature": f"{stamp},v1={digest.upper()}"}
    return headers


def build_calls() -> list[Call]:
    calls: list[Call] = []
    for body in draw(stripe_bodies, EXAMPLES):  # signed as they are: malformed or not
        expected = 200 if stripe_accepts(body) else 400
        calls.append(
            Call(
                "signed",
                "/webhooks/stripe",
                body,
                {"Stripe-Signature": sign(body, SECRET)},
                "127.0.0.1",
                expected,
            )
        )
    for what, headers in draw(forged(), EXAMPLES):
        body = event()
        calls.append(
            Call(
                f"forged:{what}", "/webhooks/stripe", body, resolve(headers, body), "127.0.0.1", 400
            )
        )
    # Genuine, sent twice (the provider retries; the worker dedupes on the event id), and
    # a genuine one again once its signature has grown old.
    replayed = event()
    good = {"Stripe-Signature": sign(replayed, SECRET)}
    calls += [Call("replayed", "/webhooks/stripe", replayed, good, "127.0.0.1", 200)] * 2
    old = {"Stripe-Signature": sign(replayed, SECRET, int(time.time()) - TOLERANCE - 60)}
    calls.append(Call("replayed_late", "/webhooks/stripe", replayed, old, "127.0.0.1", 400))
    # More than 1 MiB, signed or not.
    huge = event(padding="x" * (1024 * 1024))
    calls.append(
        Call(
            "oversize",
            "/webhooks/stripe",
            huge,
            {"Stripe-Signature": sign(huge, SECRET)},
            "127.0.0.1",
            413,
        )
    )
    calls.append(Call("oversize", "/webhooks/yookassa", huge, {}, YOOKASSA_IP, 413))
    # YooKassa: anything from an allowed address is judged by its body...
    notifications = st.one_of(
        stripe_bodies,
        st.builds(
            lambda obj, ev: json.dumps(
                {"type": "notification", "event": ev, "object": obj}
            ).encode(),
            any_json,
            any_json,
        ),
        st.just(b""),
    )
    for body in draw(notifications, EXAMPLES):
        calls.append(
            Call(
                "yookassa_body",
                "/webhooks/yookassa",
                body,
                {},
                YOOKASSA_IP,
                200 if yookassa_accepts(body) else 400,
            )
        )
    genuine = json.dumps(
        {
            "type": "notification",
            "event": "payment.succeeded",
            "object": {"id": f"yk_{uuid.uuid4().hex}"},
        }
    ).encode()
    # ...and anything from elsewhere is refused, whatever it claims to be.
    ipv4 = (
        st.ip_addresses(v=4).map(str).filter(lambda ip: not ip.startswith(("185.71.7", "77.75.")))
    )
    for peer in draw(st.one_of(ipv4, st.ip_addresses(v=6).map(str)), 40):
        if peer.lower().startswith("2a02:5180"):
            continue
        calls.append(Call("yookassa_foreign", "/webhooks/yookassa", genuine, {}, peer, 403))
    spoofs = [  # (peer, X-Forwarded-For, expected)
        ("203.0.113.5", YOOKASSA_IP, 403),  # an untrusted peer's X-Forwarded-For is ignored
        (PROXY, YOOKASSA_IP, 200),  # a trusted proxy's is believed
        (PROXY, f"{YOOKASSA_IP}, 203.0.113.9", 403),  # the right-most untrusted hop counts
        (PROXY, "not-an-ip", 403),
        (PROXY, f"203.0.113.9, {YOOKASSA_IP}", 200),
        (PROXY, "", 403),
    ]
    for peer, forwarded, expected in spoofs:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        body = json.dumps(
            {
                "type": "notification",
                "event": "payment.succeeded",
                "object": {"id": f"yk_{uuid.uuid4().hex}"},
            }
        ).encode()
        calls.append(Call("yookassa_spoof", "/webhooks/yookassa", body, headers, peer, expected))
    return calls


async def published(url: str) -> Counter[str]:
    """Every message now on billing.provider-events, by message id (the queue is drained)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(names.PROVIDER_EVENTS_QUEUE)
        found: Counter[str] = Counter()
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found[message.message_id or ""] += 1
        return found
    finally:
        await connection.close()


async def test_hostile_webhooks_get_4xx_and_every_genuine_one_is_queued(
    relay: Any, vhost_url: str
) -> None:
    calls = build_calls()

    async def send(call: Call) -> httpx.Response:
        transport = httpx.ASGITransport(
            app=relay, client=(call.peer, 40000), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            return await client.post(call.path, content=call.body, headers=call.headers)

    responses: list[httpx.Response] = []
    for start in range(0, len(calls), 25):
        responses += await asyncio.gather(*(send(call) for call in calls[start : start + 25]))

    # A body that is streamed (no Content-Length) is cut off at 1 MiB too.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b"x" * 65536

    transport = httpx.ASGITransport(app=relay, client=(YOOKASSA_IP, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        streamed = await client.post("/webhooks/yookassa", content=chunks())
    assert streamed.status_code == 413

    wrong = [
        (call.describe()[:300], call.expected, response.status_code, response.text[:200])
        for call, response in zip(calls, responses, strict=True)
        if response.status_code != call.expected
    ]
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:6]}"
    assert all(r.status_code < 500 for r in responses)

    accepted = Counter(
        response.json()["detail"] for response in responses if response.status_code == 200
    )
    on_queue = await published(vhost_url)
    assert on_queue == accepted, "a 200 must mean the callback is on billing.provider-events"
    record(
        "relay",
        inputs_tried=len(calls) + 1,
        accepted=sum(accepted.values()),
        refused=Counter(str(r.status_code) for r in responses if r.status_code != 200),
        lost=sum((accepted - on_queue).values()),
    )
