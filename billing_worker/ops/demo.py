"""`billing-worker demo`: a guided end-to-end run on the local services, sandbox provider.

It starts a worker in this process (unless told one is running), then plays a client:
each command it sends, each reply and each event on `billing.events` is printed as it
flows, so a newcomer sees the whole system work in a minute.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from billing_contracts import names
from billing_worker.ops.services import connect_amqp

Say = Callable[[str], None]


class DemoClient:
    def __init__(self, url: str, say: Say) -> None:
        self.url, self.say = url, say
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> DemoClient:
        self.connection = await connect_amqp(self.url)  # unreachable: a one-line error
        self.channel = await self.connection.channel()
        replies = await self.channel.declare_queue(exclusive=True)
        await replies.consume(self._on_reply, no_ack=True)
        self.reply_queue = replies.name
        events = await self.channel.declare_queue(exclusive=True)
        await events.bind(names.EVENTS_EXCHANGE, routing_key="#")
        await events.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._replies.pop(message.correlation_id or "", None)
        if future and not future.done():
            future.set_result(json.loads(message.body))

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        self.events.append(event)
        self.say(f"  <- event {event['type']}: {json.dumps(event['data'])}")

    async def call(self, queue: str, body: dict[str, Any]) -> dict[str, Any]:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._replies[correlation_id] = future
        self.say(f"-> {queue}: {json.dumps(body)}")
        await self.channel.default_exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                             correlation_id=correlation_id, reply_to=self.reply_queue,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )  # fmt: skip
        async with asyncio.timeout(15):
            reply: dict[str, Any] = await future
        self.say(f"<- reply: {json.dumps(reply)}")
        return reply

    async def event(self, type_: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(150):
            for event in self.events:
                if event["type"] == type_ and match(event["data"]):
                    return event
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {type_} event arrived")


def _usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


def _key() -> str:
    return uuid.uuid4().hex


async def script(client: DemoClient, say: Say) -> None:
    """The story: deposit, withdraw, a refusal, an invoice paid from the balance."""
    user = f"demo-{uuid.uuid4().hex[:6]}"

    say(f"\n1. {user} deposits 25.00 USD through the sandbox provider")
    deposit = {"idempotency_key": _key(), "user_id": user, "amount": _usd("25.00")}
    reply = await client.call(names.WALLET_DEPOSIT, deposit)
    transaction = reply["data"]["transaction"]["id"]
    await client.event("deposit.completed", lambda d: d["transaction_id"] == transaction)

    say("\n2. the balance shows it")
    await client.call(names.WALLET_BALANCE, {"user_id": user})

    say("\n3. a withdrawal of 17.50 (the balance falls below the 10.00 threshold)")
    withdraw = {"user_id": user, "amount": _usd("17.50"), "description": "demo"}
    await client.call(names.WALLET_WITHDRAW, {"idempotency_key": _key(), **withdraw})
    await client.event("balance.low", lambda d: d["user_id"] == user)

    say("\n4. asking for more than is there is refused, and changes nothing")
    too_much = {**withdraw, "amount": _usd("100.00"), "description": "too much"}
    await client.call(names.WALLET_WITHDRAW, {"idempotency_key": _key(), **too_much})

    say("\n5. an invoice, paid from the balance")
    line = {"description": "Sticker", "quantity": 3, "unit_price": _usd("1.50")}
    invoice = await client.call(
        names.INVOICE_CREATE,
        {"idempotency_key": _key(), "user_id": user, "currency": "USD", "lines": [line]},
    )
    pay = {"idempotency_key": _key(), "user_id": user, "invoice_id": invoice["data"]["id"],
           "source": "balance"}  # fmt: skip
    await client.call(names.INVOICE_PAY, pay)
    await client.event("invoice.paid", lambda d: d["user_id"] == user)

    say("\n6. a malformed command (a float amount) gets invalid_message and a dead letter")
    floating = {**withdraw, "amount": {"amount": 1.5, "currency": "USD"}}
    await client.call(names.WALLET_WITHDRAW, {"idempotency_key": _key(), **floating})

    say("\n7. the history, newest first")
    await client.call(names.WALLET_TRANSACTIONS, {"user_id": user})
    await asyncio.sleep(0.5)  # let the last events arrive
