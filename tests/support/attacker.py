"""The attacker of the provider-events queue, and the state the attack tests judge.

The attacker is any broker user: it publishes a forged callback straight to
`billing.provider-events` through the default exchange with header `x-provider`, as the
relay does, but with no Stripe webhook secret and no sandbox key. What it knows is what
a customer or a careless log gives away: the PaymentIntent id (the prefix of the client
secret), the transaction id in a deposit reply, a YooKassa payment or refund id.

`Ledger` reads what the attack may have changed (balances, transactions, payment
methods, the events the worker wrote to its outbox) straight from the database, and
`handled()` counts the provider callbacks the worker has finished with, so a test can
wait for its forgery to have been dealt with instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import asyncpg
import httpx

from billing_contracts import names
from billing_worker.app import Worker
from billing_worker.ops.audit import audit

T = TypeVar("T")

# Outcomes of the pipeline after which a message is done with (a retry is not).
_NOT_FINAL = {"retried"}


def handled(worker: Worker) -> int:
    """Provider callbacks the worker finished with (applied, refused, dead-lettered...)."""
    total = 0
    for metric in worker.metrics.registry.collect():
        for sample in metric.samples:
            if (
                sample.name == "billing_messages_handled_seconds_count"
                and sample.labels.get("queue") == names.PROVIDER_EVENTS_QUEUE
                and sample.labels.get("outcome") not in _NOT_FINAL
            ):
                total += int(sample.value)
    return total


async def until_handled(worker: Worker, count: int, timeout: float = 30) -> None:
    """Until the worker has finished with `count` provider callbacks in all."""
    await eventually(lambda: _ready(handled(worker) >= count), timeout, f"{count} callbacks")


async def _ready(done: bool) -> bool:
    return done


async def eventually(
    probe: Callable[[], Awaitable[T]], timeout: float = 15, what: str = "the condition"
) -> T:
    """Poll `probe` until it returns something truthy; its last value otherwise fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value or loop.time() > deadline:
            assert value, f"timed out waiting for {what} (last: {value!r})"
            return value
        await asyncio.sleep(0.1)


@dataclass
class Attacker:
    """A broker user without any provider secret, next to a running worker."""

    worker: Worker
    rabbitmq_url: str
    connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.rabbitmq_url)
        self.channel = await self.connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def publish(
        self, provider: str, body: bytes | dict[str, Any], headers: dict[str, Any] | None = None
    ) -> None:
        """Publish a forged callback the way the relay publishes a verified one."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message = aio_pika.Message(
            raw,
            content_type="application/json",
            message_id=uuid.uuid4().hex,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={names.PROVIDER_HEADER: provider, **(headers or {})},
        )
        await self.channel.default_exchange.publish(
            message, routing_key=names.PROVIDER_EVENTS_QUEUE, mandatory=True
        )

    async def forge(
        self, provider: str, body: bytes | dict[str, Any], headers: dict[str, Any] | None = None
    ) -> None:
        """Publish a forged callback and wait until the worker has finished with it."""
        before = handled(self.worker)
        await self.publish(provider, body, headers)
        await until_handled(self.worker, before + 1)


async def delivered(worker: Worker, send: Callable[[], Awaitable[Any]], count: int = 1) -> Any:
    """Run `send` (e.g. a genuine webhook through the relay) and wait until the worker
    has finished with the `count` callbacks it causes; returns what `send` returned."""
    before = handled(worker)
    result = await send()
    await until_handled(worker, before + count)
    return result


def stripe_event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    """A Stripe webhook Event body as the attacker writes it."""
    return json.dumps(
        {
            "id": event_id or f"evt_forged_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": 1_800_000_000,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        },
        separators=(",", ":"),
    ).encode()


def yookassa_notification(event: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": "notification", "event": event, "object": obj}).encode()


def intent_id_of(client_secret: str) -> str:
    """The PaymentIntent id anyone holding the client secret knows."""
    return client_secret.split("_secret_", 1)[0]


def sandbox_ids(transaction_id: str) -> tuple[str, str]:
    """The sandbox's payment id and callback event id of a deposit, from its transaction
    id (see providers/sandbox.py: both derive from the id and nothing secret)."""
    seed = uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{transaction_id}")
    return f"sbx_pi_{seed.hex}", f"sbx_evt_{seed.hex}"


# --- what the shop's staff do at the provider (its dashboard / API) ------------------------


async def stripe_refund(base: str, payment_intent: str, amount_minor: int) -> dict[str, Any]:
    """Refund part of a PaymentIntent through the Stripe fake's /v1/refunds API."""
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post(
            "/v1/refunds",
            data={"payment_intent": payment_intent, "amount": str(amount_minor)},
            headers={"Authorization": "Bearer sk_test_billing"},
        )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def yookassa_refund(
    base: str, payment_id: str, value: str, currency: str = "RUB"
) -> dict[str, Any]:
    """Refund part of a payment through the YooKassa fake's /v3/refunds API."""
    async with httpx.AsyncClient(base_url=base, auth=("123456", "test_secret")) as client:
        response = await client.post(
            "/v3/refunds",
            json={"payment_id": payment_id, "amount": {"value": value, "currency": currency}},
            headers={"Idempotence-Key": uuid.uuid4().hex},
        )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- the state an attack may have changed --------------------------------------------------


@dataclass
class Ledger:
    db: asyncpg.Connection

    async def balance(self, user: str, currency: str) -> int:
        """The user's balance in minor units (0 without an account)."""
        value = await self.db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1 AND currency = $2",
            user,
            currency,
        )
        return int(value or 0)

    async def transactions(self, user: str, kind: str | None = None) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT * FROM transactions WHERE user_id = $1 AND ($2::text IS NULL OR kind = $2) "
            "ORDER BY created_at, id",
            user,
            kind,
        )
        return [dict(row) for row in rows]

    async def transaction(self, transaction_id: str | uuid.UUID) -> dict[str, Any]:
        row = await self.db.fetchrow(
            "SELECT * FROM transactions WHERE id = $1", uuid.UUID(str(transaction_id))
        )
        assert row is not None, f"no transaction {transaction_id}"
        return dict(row)

    async def status(self, transaction_id: str | uuid.UUID) -> str:
        return str((await self.transaction(transaction_id))["status"])

    async def refunds_of(self, transaction_id: str | uuid.UUID) -> list[dict[str, Any]]:
        """Refund transactions linked to a payment (column `refund_of`)."""
        deposit = await self.transaction(transaction_id)
        return [
            row
            for row in await self.transactions(deposit["user_id"], "refund")
            if row.get("refund_of") == deposit["id"]
        ]

    async def payment_methods(self, user: str) -> set[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT provider, provider_method_id FROM payment_methods WHERE user_id = $1", user
        )
        return {(row["provider"], row["provider_method_id"]) for row in rows}

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        row = await self.db.fetchrow(
            "SELECT * FROM subscriptions WHERE id = $1", uuid.UUID(subscription_id)
        )
        assert row is not None
        return dict(row)

    async def events(self, type_: str, user: str) -> list[dict[str, Any]]:
        """The data of every `type_` event the worker wrote (so published) for `user`."""
        rows = await self.db.fetch(
            "SELECT payload FROM outbox WHERE type = $1 AND payload->'data'->>'user_id' = $2 "
            "ORDER BY id",
            type_,
            user,
        )
        return [json.loads(row["payload"])["data"] for row in rows]

    async def assert_audit_clean(self) -> None:
        findings = await audit(self.db)
        assert not findings, "audit failed:\n" + "\n".join(
            f"{f.check}: {f.rows[:5]}" for f in findings
        )
