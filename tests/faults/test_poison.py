"""Poison messages: tried BILLING_MAX_DELIVERIES times, dead-lettered with the reason, and
never in the way of the messages behind them, even with one message in flight at a time
(prefetch 1)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from billing_contracts import names
from billing_worker.app import Worker, build_gateways, build_worker
from billing_worker.domain.events import ProviderEvent
from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from support.figures import record
from support.invariants import check_invariants, connect
from support.load import LoadClient
from support.sandbox import signed
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MAX_DELIVERIES = 5
GOOD = 50


class DeadProvider(SandboxGateway):
    """`stripe` that never answers: every payment attempt fails like a timeout."""

    name = "stripe"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.calls[request.idempotency_key] += 1
        raise ConnectionError("provider timed out")

    def parse_event(self, body: bytes) -> ProviderEvent:
        return dataclasses.replace(super().parse_event(body), provider=self.name)


@pytest.fixture
def dead() -> DeadProvider:
    return DeadProvider()


@pytest.fixture
def settings(database_url: str, vhost_url: str) -> Settings:
    # The back-off adds up to ~3 s per poison message: long enough to see the good
    # messages overtake it, short enough for the suite.
    return make_settings(
        database_url,
        vhost_url,
        prefetch=1,
        max_deliveries=MAX_DELIVERIES,
        retry_delays_ms=(200, 400, 800, 1600),
    )


@pytest.fixture
async def client(vhost_url: str) -> AsyncIterator[LoadClient]:
    client = LoadClient(vhost_url)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
async def worker(
    settings: Settings, dead: DeadProvider, client: LoadClient
) -> AsyncIterator[Worker]:
    sandbox = build_gateways(settings).get("sandbox")
    worker = build_worker(
        settings, gateways=Gateways({"sandbox": sandbox, "stripe": dead}, default="sandbox")
    )
    async with worker.app:
        yield worker


def deposit(user: str, provider: str = "sandbox") -> dict[str, object]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "provider": provider,
        "amount": {"amount": "2.00", "currency": "USD"},
    }


async def test_a_poison_command_is_tried_max_deliveries_times_while_50_behind_it_are_answered(
    worker: Worker, client: LoadClient, dead: DeadProvider, database_url: str
) -> None:
    poison = await client.submit(names.WALLET_DEPOSIT, deposit("poison-user", "stripe"))
    good = [await client.submit(names.WALLET_DEPOSIT, deposit(f"good-{n}")) for n in range(GOOD)]
    order: list[str] = []

    async def answered(key: str) -> None:
        await client.wait(key, timeout=60, final=False)
        order.append(key)

    await asyncio.gather(*(answered(key) for key in [poison, *good]))

    assert order[-1] == poison, "the good messages had to wait for the poison one"
    assert all(client.final(key)["ok"] for key in good)  # type: ignore[index]
    [final] = client.replies[poison]  # one answer, after the last attempt
    assert final["error"]["code"] == "internal_error", final
    assert final["error"]["details"] == {"attempts": MAX_DELIVERIES}
    assert sum(dead.calls.values()) == MAX_DELIVERIES
    await client.wait_until(lambda: client.dead_letter_for(poison), 10, "the dead letter")
    [letter] = client.dead_letter_for(poison)
    reason = str(letter.headers["x-billing-reason"])
    assert reason.startswith(f"failed {MAX_DELIVERIES} times: ConnectionError: provider timed out")
    assert letter.headers["x-billing-original-queue"] == names.WALLET_DEPOSIT
    assert letter.headers["x-billing-attempts"] == MAX_DELIVERIES
    assert json.loads(letter.body)["user_id"] == "poison-user"  # the message itself, unchanged
    # The poison deposit's provider never answered: its begun call stays for the
    # reconciler (a later answer completes it under the same key), nothing was credited.
    await check_invariants(
        database_url, client, expected_balances={(f"good-{n}", "USD"): 2_00 for n in range(GOOD)},
        unanswered_providers={"poison-user"},
    )  # fmt: skip
    async with connect(database_url) as db:
        kept = await db.fetch("SELECT kind FROM provider_intents WHERE user_id = 'poison-user'")
    assert [row["kind"] for row in kept] == ["deposit"]
    record(
        "poison",
        commands=GOOD + 1,
        poison_attempts=sum(dead.calls.values()),
        answered_while_poison_retried=GOOD,
        lost=0,
    )


async def test_poison_callbacks_do_not_hold_back_the_callbacks_behind_them(
    worker: Worker, client: LoadClient, database_url: str
) -> None:
    # At the head of billing.provider-events: a callback for a payment that does not exist
    # (retried, then dead-lettered) and a body too deeply nested for any JSON parser.
    unknown = json.dumps(
        {
            "id": f"sbx_evt_{uuid.uuid4().hex}",
            "type": "payment.succeeded",
            "data": {"payment_id": "sbx_pi_nobody", "transaction_id": str(uuid.uuid4()),
                     "amount_minor": 200, "currency": "USD"},
        }
    ).encode()  # fmt: skip
    nested = b'{"id": "x", "data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    sandbox = worker.service.deps.gateways.get("sandbox")
    assert isinstance(sandbox, SandboxGateway)
    # The order in which the worker took the callbacks up: their payment ids, the unknown
    # payment's once per attempt.
    taken: list[str | None] = []
    parse = sandbox.parse_event

    def parse_and_note(body: bytes) -> ProviderEvent:
        event = parse(body)
        taken.append(event.provider_ref)
        return event

    sandbox.parse_event = parse_and_note  # type: ignore[method-assign]
    poison_ids = [
        await client.fire(names.PROVIDER_EVENTS_QUEUE, unknown, headers=signed(sandbox, unknown)),
        await client.fire(names.PROVIDER_EVENTS_QUEUE, nested, headers={"x-provider": "sandbox"}),
    ]
    # Behind them, 50 deposits whose sandbox callbacks take the same queue.
    keys = [await client.submit(names.WALLET_DEPOSIT, deposit(f"cb-{n}")) for n in range(GOOD)]
    await client.settle(timeout=60)
    ids = {client.final(k)["data"]["transaction"]["id"] for k in keys}  # type: ignore[index]
    await client.wait_until(
        lambda: (
            ids <= {e.body["data"]["transaction_id"] for e in client.events_of("deposit.completed")}
        ),
        30,
        "the deposits behind the poison callbacks to complete",
    )
    await client.wait_until(
        lambda: all(client.dead_letter_for(p) for p in poison_ids),
        30,
        "both poison callbacks to be dead-lettered",
    )
    # ...and callbacks behind the unknown payment's were taken up between its attempts
    # (it waited out its back-off in the delay queue, not at the head of the queue). Not
    # "every deposit before its last attempt": how many fit in its ~3 s of back-off
    # depends on how busy the machine is.
    attempts = [n for n, ref in enumerate(taken) if ref == "sbx_pi_nobody"]
    assert len(attempts) == MAX_DELIVERIES, taken
    between = taken[attempts[0] : attempts[-1]]
    assert any(ref not in (None, "sbx_pi_nobody") for ref in between), taken
    retried = str(client.dead_letter_for(poison_ids[0])[0].headers["x-billing-reason"])
    assert retried.startswith(f"failed {MAX_DELIVERIES} times: TransientError: no sandbox payment")
    refused = str(client.dead_letter_for(poison_ids[1])[0].headers["x-billing-reason"])
    assert refused.startswith("invalid_message: ")
    await check_invariants(
        database_url, client, expected_balances={(f"cb-{n}", "USD"): 2_00 for n in range(GOOD)}
    )
    record("poison", commands=GOOD, poison_callbacks=2, lost=0)
