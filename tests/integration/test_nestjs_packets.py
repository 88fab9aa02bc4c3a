"""NestJS packets on the wire, byte for byte as @nestjs/microservices' ClientRMQ sends them
(tests/nestjs runs the real package): `{pattern, data, id}` in, `{id, response|err,
isDisposed}` out, through `billing.commands` or the default exchange. Anything that is
not exactly a packet is an ordinary message, answered as before."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from billing_contracts import names
from billing_worker.access import PRIVILEGED
from billing_worker.app import Worker
from billing_worker.messaging.parsing import MAX_BODY_BYTES
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT, WITHDRAW, BALANCE = names.WALLET_DEPOSIT, names.WALLET_WITHDRAW, names.WALLET_BALANCE


def new_user() -> str:
    return f"nest-{uuid.uuid4().hex[:12]}"


def deposit(user: str, key: str, amount: str = "10.00") -> dict[str, Any]:
    return {"idempotency_key": key, "user_id": user,
            "amount": {"amount": amount, "currency": "USD"}}  # fmt: skip


def packet(pattern: str, data: Any, packet_id: str | None = "a1b2c3") -> dict[str, Any]:
    sent = {"pattern": pattern, "data": data}
    return sent if packet_id is None else {**sent, "id": packet_id}


async def nest_call(bus: Bus, pattern: str, data: Any, **options: Any) -> dict[str, Any]:
    """What ClientRMQ with {exchange: 'billing.commands', wildcards: true} publishes."""
    return await bus.call(pattern, packet(pattern, data), exchange=names.COMMANDS_EXCHANGE,
                          content_type="", **options)  # fmt: skip


async def test_a_packet_gets_its_result_in_nestjs_shape(bus: Bus) -> None:
    user = new_user()
    reply = await nest_call(bus, DEPOSIT, deposit(user, uuid.uuid4().hex))
    assert set(reply) == {"id", "response", "isDisposed"}, reply
    assert reply["id"] == "a1b2c3"
    assert reply["isDisposed"] is True
    assert reply["response"]["transaction"]["user_id"] == user


async def test_an_idempotent_replay_comes_back_in_the_shape_of_the_request_that_asks(
    bus: Bus,
) -> None:
    user, key = new_user(), uuid.uuid4().hex
    plain = await bus.call(DEPOSIT, deposit(user, key))
    assert plain["ok"], plain
    nest = await nest_call(bus, DEPOSIT, deposit(user, key))
    assert nest == {"id": "a1b2c3", "response": plain["data"], "isDisposed": True}
    assert await bus.call(DEPOSIT, deposit(user, key)) == plain  # and back again

    other = uuid.uuid4().hex  # the other way round: NestJS first
    first = await nest_call(bus, DEPOSIT, deposit(user, other))
    assert await bus.call(DEPOSIT, deposit(user, other)) == {"ok": True, "data": first["response"]}


async def test_a_refusal_is_err_with_the_error_object(bus: Bus) -> None:
    user = new_user()
    withdrawal = {"idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "Pro",
                  "amount": {"amount": "5.00", "currency": "USD"}}  # fmt: skip
    reply = await nest_call(bus, WITHDRAW, withdrawal)
    assert set(reply) == {"id", "err", "isDisposed"}, reply
    assert reply["err"]["code"] == "insufficient_funds"
    assert set(reply["err"]) == {"code", "message", "details"}
    assert reply["isDisposed"] is True


async def test_an_invalid_packet_is_err_invalid_message_and_dead_lettered(bus: Bus) -> None:
    correlation_id = uuid.uuid4().hex
    await bus.send(DEPOSIT, packet(DEPOSIT, {"user_id": new_user()}), reply=True,
                   correlation_id=correlation_id, exchange=names.COMMANDS_EXCHANGE)  # fmt: skip
    letter = await bus.dead_letter(correlation_id)
    assert str(letter.headers[names.REASON_HEADER]).startswith("invalid_message: idempotency_key")


async def test_the_data_is_validated_like_a_command_sent_alone(bus: Bus) -> None:
    command = {**deposit(new_user(), uuid.uuid4().hex), "surprise": 1}
    plain = await bus.call(DEPOSIT, command)
    nest = await nest_call(bus, DEPOSIT, command)
    assert nest == {"id": "a1b2c3", "err": plain["error"], "isDisposed": True}
    assert nest["err"]["code"] == "invalid_message"


async def test_a_pattern_that_is_not_the_queue_is_refused(bus: Bus) -> None:
    # a client configured with {queue: 'billing.wallet.balance'} sending another command
    reply = await bus.call(BALANCE, packet(WITHDRAW, {"user_id": new_user()}))
    assert reply["err"]["code"] == "invalid_message"
    assert reply["err"]["message"] == f"pattern {WITHDRAW!r} is not {BALANCE}"


async def test_a_packet_without_id_is_answered_under_its_correlation_id(bus: Bus) -> None:
    seen = set(bus.reply_counts)
    reply = await bus.call(BALANCE, packet(BALANCE, {"user_id": new_user()}, packet_id=None))
    [correlation_id] = set(bus.reply_counts) - seen
    assert reply == {"id": correlation_id, "response": reply["response"], "isDisposed": True}


async def test_an_oversized_packet_is_refused_in_nestjs_shape(bus: Bus) -> None:
    data = {**deposit(new_user(), uuid.uuid4().hex), "pad": "x" * MAX_BODY_BYTES}
    reply = await nest_call(bus, DEPOSIT, data)
    assert reply["err"]["code"] == "invalid_message"
    assert "exceeds" in reply["err"]["message"]


@pytest.mark.parametrize(
    "sent",
    [
        {"pattern": DEPOSIT, "data": {}, "id": "1", "extra": True},  # a key too many
        {"pattern": 42, "data": {}},  # not a string pattern
        {"pattern": DEPOSIT, "data": {}, "id": 7},  # not a string id
        {"pattern": DEPOSIT},  # no data
    ],
    ids=["extra-key", "pattern-not-string", "id-not-string", "no-data"],
)
async def test_a_body_that_is_not_exactly_a_packet_is_an_ordinary_message(
    bus: Bus, sent: dict[str, Any]
) -> None:
    reply = await bus.call(DEPOSIT, sent)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_message"


async def test_the_commands_exchange_routes_ordinary_messages_too(bus: Bus) -> None:
    user = new_user()
    reply = await bus.call(DEPOSIT, deposit(user, uuid.uuid4().hex),
                           exchange=names.COMMANDS_EXCHANGE)  # fmt: skip
    assert reply["ok"], reply
    balance = await bus.call(BALANCE, {"user_id": user}, exchange=names.COMMANDS_EXCHANGE)
    assert balance["ok"], balance


async def test_every_command_and_query_queue_is_bound_to_the_commands_exchange(bus: Bus) -> None:
    for queue in (*names.COMMAND_QUEUES, *names.QUERY_QUEUES):
        reply = await nest_call(bus, queue, {"surprise": 1})  # answered, so it got there
        refused = "forbidden" if queue in PRIVILEGED else "invalid_message"  # credits: unread
        assert reply["err"]["code"] == refused, (queue, reply)


async def test_order_created_packets_make_one_invoice(bus: Bus, worker: Worker) -> None:
    user, order_id = new_user(), f"ord-{uuid.uuid4().hex[:12]}"
    order = {"order_id": order_id, "user_id": user, "currency": "USD",
             "items": [{"description": "Mug", "quantity": 1,
                        "unit_price": {"amount": "3.00", "currency": "USD"}}]}  # fmt: skip
    for _ in range(3):  # NestJS's emit('order.created', order) to the orders exchange
        await bus.send(names.ORDER_CREATED, packet(names.ORDER_CREATED, order, None),
                       exchange=names.ORDERS_EXCHANGE, content_type="")  # fmt: skip
    event = await bus.event("invoice.created", lambda data: data["order_id"] == order_id)
    assert event["pattern"] == "invoice.created"

    def handled(outcome: str) -> float:
        labels = {"queue": names.ORDER_CREATED_QUEUE, "outcome": outcome}
        value = worker.metrics.registry.get_sample_value(
            "billing_messages_handled_seconds_count", labels
        )
        return value or 0.0

    for _ in range(600):  # until the worker has handled all three copies
        if handled("ok") >= 3:
            break
        await asyncio.sleep(0.05)
    assert (handled("ok"), handled("invalid")) == (3, 0)
    page = await bus.call(names.INVOICE_GET, {"user_id": user})
    assert [item["order_id"] for item in page["data"]["items"]] == [order_id]
