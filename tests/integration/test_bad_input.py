"""Bad input gets `invalid_message` and a dead letter with the reason; the worker goes on."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.providers.base import Gateways, ProviderEvent
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from support.rpc import Bus
from support.sandbox import signed

pytestmark = pytest.mark.integration

WITHDRAW = "billing.wallet.withdraw"


def withdrawal(**changes: Any) -> dict[str, Any]:
    command: dict[str, Any] = {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": "user-bad-input",
        "amount": {"amount": "1.00", "currency": "USD"},
        "description": "x",
    }
    command.update(changes)
    return {key: value for key, value in command.items() if value is not None}


def with_amount(amount: Any, currency: str = "USD") -> dict[str, Any]:
    return withdrawal(amount={"amount": amount, "currency": currency})


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"{not json", "(body)"),
    "a JSON array": (b"[1, 2]", "(body)"),
    "a float amount": (json.dumps(with_amount(12.5)).encode(), "amount.amount"),
    "an integer amount": (json.dumps(with_amount(12)).encode(), "amount.amount"),
    "an over-precise amount": (json.dumps(with_amount("1.001")).encode(), "amount"),
    "an over-precise JPY amount": (json.dumps(with_amount("1.5", "JPY")).encode(), "amount"),
    "an exponent amount": (json.dumps(with_amount("1e3")).encode(), "amount"),
    "a NaN amount": (json.dumps(with_amount("NaN")).encode(), "amount"),
    "a negative amount": (json.dumps(with_amount("-1.00")).encode(), "amount"),
    "an unknown currency": (json.dumps(with_amount("1.00", "XYZ")).encode(), "amount.currency"),
    "a missing field": (json.dumps(withdrawal(description=None)).encode(), "description"),
    "a missing idempotency key": (
        json.dumps(withdrawal(idempotency_key=None)).encode(),
        "idempotency_key",
    ),
    "an unknown field": (json.dumps(withdrawal(surprise=True)).encode(), "surprise"),
    "a zero amount": (json.dumps(with_amount("0.00")).encode(), "(body)"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_input_is_answered_invalid_message_and_dead_lettered_with_the_reason(
    bus: Bus, case: str
) -> None:
    raw, field = BAD_BODIES[case]

    reply = await bus.call(WITHDRAW, raw)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_message"
    assert reply["error"]["message"]
    dead = await bus.dead_letters.wait_for(lambda m: m.body == raw)
    headers = dead[0].headers
    assert str(headers["x-billing-reason"]).startswith("invalid_message: ")
    assert headers["x-billing-original-queue"] == WITHDRAW
    assert dead[0].routing_key == WITHDRAW
    fields = [error["field"] for error in reply["error"]["details"].get("errors", [])]
    assert field in fields or field == "(body)"


async def test_an_invalid_message_without_reply_to_is_dead_lettered_too(bus: Bus) -> None:
    correlation_id = await bus.send(WITHDRAW, b"\xff\xfe garbage")
    dead = await bus.dead_letter(correlation_id)
    assert str(dead.headers["x-billing-reason"]).startswith("invalid_message")


async def test_a_body_over_one_mebibyte_is_refused_without_being_parsed(bus: Bus) -> None:
    huge = json.dumps(withdrawal(description="x" * (1024 * 1024 + 1))).encode()
    reply = await bus.call(WITHDRAW, huge)
    assert reply["error"]["code"] == "invalid_message"
    assert "exceeds" in reply["error"]["message"]


async def test_the_worker_keeps_serving_after_bad_input(bus: Bus) -> None:
    for raw, _ in BAD_BODIES.values():
        await bus.send(WITHDRAW, raw)
    reply = await bus.call("billing.wallet.balance", {"user_id": "someone"})
    assert reply == {"ok": True, "data": {"user_id": "someone", "accounts": []}}


async def test_a_provider_event_naming_no_configured_provider_is_dead_lettered(bus: Bus) -> None:
    correlation_id = await bus.send(
        "billing.provider-events", b'{"id": "evt_1"}', headers={"x-provider": "paypal"}
    )
    dead = await bus.dead_letter(correlation_id)
    assert "paypal" in str(dead.headers["x-billing-reason"])


SANDBOX_AMOUNTS = {
    "infinite": b"Infinity",
    "not a number": b"NaN",
    "fractional": b"1.5",
    "boolean": b"true",
    "text": b'"100"',
    "negative": b"-100",
    "beyond a bigint": b"1" + b"0" * 30,
}


@pytest.mark.parametrize("case", list(SANDBOX_AMOUNTS))
async def test_a_genuinely_signed_callback_with_a_nonsense_amount_is_dead_lettered_as_invalid(
    bus: Bus, worker: Worker, case: str
) -> None:
    """Signed with the worker's own key, so only the parser stands between it and the books:
    an amount that is not a whole, positive, storable number of minor units is refused
    (a parser that crashed instead left the message with nobody, never dead-lettered)."""
    body = (
        b'{"id": "sbx_evt_' + uuid.uuid4().hex.encode() + b'", "type": "payment.succeeded", '
        b'"data": {"payment_id": "sbx_pi_x", "amount_minor": ' + SANDBOX_AMOUNTS[case] + b", "
        b'"currency": "USD"}}'
    )
    sandbox = worker.service.deps.gateways.get("sandbox")
    assert isinstance(sandbox, SandboxGateway)

    correlation_id = await bus.send("billing.provider-events", body, headers=signed(sandbox, body))

    dead = await bus.dead_letter(correlation_id)
    assert str(dead.headers["x-billing-reason"]).startswith("invalid_message: "), dead.headers
    assert "amount_minor" in str(dead.headers["x-billing-reason"])


class CrashingSandbox(SandboxGateway):
    """A sandbox whose callback parser has a bug (raises what no parser is meant to)."""

    def parse_event(self, body: bytes) -> ProviderEvent:
        raise ZeroDivisionError("a parser bug")


@pytest.fixture
async def crashing_worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = build_worker(settings, gateways=Gateways({"sandbox": CrashingSandbox()}, "sandbox"))
    async with worker.app:
        yield worker


async def test_a_parser_that_crashes_refuses_the_message_instead_of_leaving_it_unacknowledged(
    crashing_worker: Worker, rabbitmq_url: str
) -> None:
    """Under manual acknowledgement an exception out of the parser used to leave the message
    unacknowledged: never answered, never dead-lettered, holding a prefetch slot."""
    bus = Bus(rabbitmq_url)
    await bus.start()
    try:
        sandbox = crashing_worker.service.deps.gateways.get("sandbox")
        assert isinstance(sandbox, SandboxGateway)
        bodies = [b'{"id": "evt_%d"}' % n for n in range(3)]
        sent = [
            await bus.send("billing.provider-events", body, headers=signed(sandbox, body))
            for body in bodies
        ]
        for correlation_id in sent:
            dead = await bus.dead_letter(correlation_id)
            reason = str(dead.headers["x-billing-reason"])
            assert reason == "invalid_message: unreadable body: ZeroDivisionError: a parser bug"
        reply = await bus.call("billing.wallet.balance", {"user_id": "after-the-crash"})
        assert reply["ok"] is True
    finally:
        await bus.close()


async def test_a_signed_callback_naming_a_lone_surrogate_is_dead_lettered_as_invalid(
    bus: Bus, worker: Worker
) -> None:
    """JSON may spell a lone surrogate ("\\ud800"); no PostgreSQL text holds one, so the
    sandbox's parser refuses it as the contract models' parser does (found by fuzzing)."""
    body = (
        b'{"id": "\\ud800", "type": "payment.succeeded", "data": {"payment_id": "sbx_pi_x", '
        b'"amount_minor": 100, "currency": "USD"}}'
    )
    sandbox = worker.service.deps.gateways.get("sandbox")
    assert isinstance(sandbox, SandboxGateway)

    correlation_id = await bus.send("billing.provider-events", body, headers=signed(sandbox, body))

    dead = await bus.dead_letter(correlation_id)
    assert str(dead.headers["x-billing-reason"]).startswith("invalid_message: "), dead.headers
