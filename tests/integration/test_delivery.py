"""Redelivery, retries, dead letters, provider-event dedupe and outbox catch-up."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from billing_worker.app import Worker, build_gateways, build_worker, load_service_keys
from billing_worker.db.engine import driver_connection
from billing_worker.domain.events import ProviderEvent
from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from support.rpc import Bus
from support.sandbox import signed

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


class FlakyGateway(SandboxGateway):
    """Stands in for a provider that times out: fails the first `failures` calls per key."""

    name = "stripe"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.calls[request.idempotency_key] += 1
        failures = int((request.payment_method_id or "fail_0").split("_")[1])
        if self.calls[request.idempotency_key] <= failures:
            raise ConnectionError("provider timed out")
        return await super().create_payment(request)

    def parse_event(self, body: bytes) -> ProviderEvent:
        return dataclasses.replace(super().parse_event(body), provider=self.name)


@pytest.fixture
def flaky() -> FlakyGateway:
    return FlakyGateway()


@pytest.fixture
async def worker(settings: Settings, flaky: FlakyGateway) -> AsyncIterator[Worker]:
    gateways = build_gateways(settings)
    both = Gateways({"sandbox": gateways.get("sandbox"), "stripe": flaky}, default="sandbox")
    worker = build_worker(settings, gateways=both)
    async with worker.app:
        yield worker


def deposit(user: str, method: str) -> dict[str, object]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "amount": {"amount": "3.00", "currency": "USD"},
        "provider": "stripe",
        "payment_method_id": method,
    }


async def test_a_transient_failure_is_retried_with_back_off_and_then_succeeds(
    bus: Bus, flaky: FlakyGateway
) -> None:
    command = deposit("user-flaky", "fail_2")

    reply = await bus.call(DEPOSIT, command)

    assert reply["ok"], reply
    assert sum(flaky.calls.values()) == 3
    await bus.event(
        "deposit.completed", lambda d: d["transaction_id"] == reply["data"]["transaction"]["id"]
    )


async def test_a_message_failing_every_time_is_dead_lettered_after_max_deliveries(
    bus: Bus, flaky: FlakyGateway, settings: Settings
) -> None:
    command = deposit("user-poison", "fail_99")

    reply = await bus.call(DEPOSIT, command)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "internal_error"
    assert sum(flaky.calls.values()) == settings.max_deliveries
    [dead] = await bus.dead_letters.wait_for(lambda m: json.loads(m.body) == command)
    reason = str(dead.headers["x-billing-reason"])
    assert reason.startswith(f"failed {settings.max_deliveries} times")
    assert "ConnectionError: provider timed out" in reason


async def test_a_poison_message_does_not_block_the_messages_behind_it(bus: Bus) -> None:
    poison = asyncio.create_task(bus.call(DEPOSIT, deposit("user-poison-2", "fail_99")))
    reply = await bus.call("billing.wallet.balance", {"user_id": "user-poison-2"})
    assert reply["ok"]
    assert not poison.done()
    assert (await poison)["error"]["code"] == "internal_error"


async def sandbox_event_for(
    worker: Worker, transaction_id: str, method: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The very callback the sandbox sent for this deposit (its ids are deterministic),
    with its signature headers."""
    sandbox = worker.service.deps.gateways.get("sandbox")
    assert isinstance(sandbox, SandboxGateway)
    result = await sandbox.create_payment(
        PaymentRequest(
            transaction_id=uuid.UUID(transaction_id), user_id="-", amount_minor=200,
            currency="USD", idempotency_key=transaction_id, payment_method_id=method,
        )
    )  # fmt: skip
    [notification] = result.notifications
    return notification.body, {**notification.headers, "x-provider": "sandbox"}


async def test_the_same_provider_event_delivered_again_and_concurrently_applies_once(
    bus: Bus, worker: Worker
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        DEPOSIT, {"idempotency_key": uuid.uuid4().hex, "user_id": user,
                  "amount": {"amount": "2.00", "currency": "USD"}},
    )  # fmt: skip
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
    event, headers = await sandbox_event_for(worker, transaction_id)

    await asyncio.gather(
        *(bus.send("billing.provider-events", event, headers=headers) for _ in range(5))
    )
    await asyncio.sleep(1)

    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 1
    balance = await bus.call("billing.wallet.balance", {"user_id": user})
    assert balance["data"]["accounts"][0]["balance"]["amount"] == "2.00"


async def test_a_failure_arriving_after_success_changes_nothing(bus: Bus, worker: Worker) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        DEPOSIT, {"idempotency_key": uuid.uuid4().hex, "user_id": user,
                  "amount": {"amount": "2.00", "currency": "USD"}},
    )  # fmt: skip
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
    body, _ = await sandbox_event_for(worker, transaction_id, "pm_card_chargeDeclined")
    late_failure = json.loads(body)
    late_failure["id"] = "sbx_evt_late_failure_" + uuid.uuid4().hex
    late = json.dumps(late_failure).encode()
    sandbox = worker.service.deps.gateways.get("sandbox")
    assert isinstance(sandbox, SandboxGateway)

    await bus.send("billing.provider-events", late, headers=signed(sandbox, late))
    await asyncio.sleep(1)

    assert not bus.events_of("payment.failed", lambda d: d["user_id"] == user)
    history = await bus.call("billing.wallet.transactions", {"user_id": user})
    assert history["data"]["items"][0]["status"] == "completed"


async def unpublished(worker: Worker) -> int:
    async with driver_connection(worker.engine) as db:
        return int(await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def test_the_outbox_publishes_what_was_committed_while_the_broker_was_down(
    bus: Bus, worker: Worker, settings: Settings
) -> None:
    from billing_contracts.wallet import Deposit, Withdraw
    from billing_worker.handlers import wallet

    await worker.publisher.stop()  # nobody publishes from here on
    offline = build_worker(settings)  # a worker whose broker connection is down
    await load_service_keys(offline.engine, offline.service.deps.gateways)  # as start-up does
    user = f"user-{uuid.uuid4().hex[:8]}"
    reply = await offline.service.command(
        "wallet.deposit",
        Deposit.model_validate({"idempotency_key": uuid.uuid4().hex, "user_id": user,
                                "amount": {"amount": "12.00", "currency": "USD"}}),
        wallet.deposit,
    )  # fmt: skip
    assert reply["ok"]
    with pytest.raises(Exception):  # noqa: B017,PT011 - whatever the client raises without a broker
        await offline.publisher.drain(grace=0.0)  # every row, however young
    assert await unpublished(worker) >= 1
    assert not bus.events_of("deposit.completed", lambda d: d["user_id"] == user)

    async with offline.app:  # the broker is back: the publisher catches up by itself
        await bus.event("deposit.completed", lambda d: d["user_id"] == user)
        withdrawn = await offline.service.command(
            "wallet.withdraw",
            Withdraw.model_validate({"idempotency_key": uuid.uuid4().hex, "user_id": user,
                                     "amount": {"amount": "1.00", "currency": "USD"},
                                     "description": "after"}),
            wallet.withdraw,
        )  # fmt: skip
        assert withdrawn["ok"]
        await bus.event("withdrawal.completed", lambda d: d["user_id"] == user)
    assert await unpublished(worker) == 0
