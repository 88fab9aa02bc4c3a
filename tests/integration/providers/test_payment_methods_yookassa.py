"""Saved YooKassa payment methods end to end: cards saved by a payment, listed as
YooKassa describes them, detached for good, the owner rule of every command, and a
subscription renewing on its updated method (the renewal scheduler, a manual clock)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.settings import Settings
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.methods_kit import (
    DEFAULT,
    DETACH,
    UPDATE,
    change,
    deposit,
    key,
    listing,
    new_user,
    not_found,
    yookassa_setup_saved,
)
from support.relay import Relay
from support.rpc import Bus
from support.snapshot import state_of

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


# --- YooKassa --------------------------------------------------------------------------


async def yookassa_saved(bus: Bus, relay: Relay, fake: FakeYooKassa, user: str) -> str:
    """A card saved by the user's first payment through the redirect."""
    reply = await deposit(bus, user, "yookassa", "100.00", "RUB", return_url="https://shop/r")
    assert reply["ok"], reply
    transaction_id = reply["data"]["transaction"]["id"]
    [payment] = [p for p in fake.payments.values()
                 if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
    fake.pay(payment["id"])
    notification = fake.notification("payment.succeeded", payment["id"])
    assert (await relay.yookassa(notification)).status_code == 200
    method = str(payment["payment_method"]["id"])
    await bus.event("payment_method.saved",
                    lambda d: d["payment_method"]["payment_method_id"] == method)  # fmt: skip
    return method


async def test_a_yookassa_card_is_listed_as_yookassa_describes_it_and_detached_for_good(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    method = await yookassa_saved(bus, relay, fake, user)

    [item] = await listing(bus, user, "yookassa")
    assert item | {"created_at": None} == {
        "payment_method_id": method, "provider": "yookassa", "brand": "MasterCard",
        "last4": "4444", "exp_month": 12, "exp_year": 2030, "is_default": True,
        "created_at": None,
    }  # fmt: skip
    assert (await change(bus, DEFAULT, user, "yookassa", method))["data"]["is_default"]

    removed = await change(bus, DETACH, user, "yookassa", method)

    assert removed["ok"], removed
    assert await listing(bus, user) == []
    payments = len(fake.payments)
    charged = await deposit(bus, user, "yookassa", "100.00", "RUB", payment_method_id=method)
    assert not_found(charged, method, "yookassa")
    assert len(fake.payments) == payments  # YooKassa was never asked to charge it


async def test_another_users_method_is_not_found_for_every_command(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    method = await yookassa_saved(bus, relay, fake, owner)
    code = await plan(bus)
    sub = await yookassa_subscription(bus, relay, fake, attacker, code)
    async with driver_connection(worker.engine) as db:
        before = await state_of(db, [owner, attacker])

    replies = [
        await change(bus, DETACH, attacker, "yookassa", method),
        await change(bus, DEFAULT, attacker, "yookassa", method),
        await bus.call(UPDATE, {"idempotency_key": key(), "user_id": attacker,
                                "subscription_id": sub, "payment_method_id": method}),
    ]  # fmt: skip

    assert all(not_found(reply, method, "yookassa") for reply in replies), replies
    assert method not in [m["payment_method_id"] for m in await listing(bus, attacker)]
    async with driver_connection(worker.engine) as db:
        assert await state_of(db, [owner, attacker]) == before
    # the owner's own subscription id is not_found for the attacker either way round
    other = await bus.call(
        UPDATE,
        {
            "idempotency_key": key(),
            "user_id": owner,
            "subscription_id": sub,
            "payment_method_id": method,
        },
    )
    assert other["error"]["code"] == "not_found", other


async def plan(bus: Bus) -> str:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call("billing.plan.upsert", {
        "idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "499.00", "currency": "RUB"}})  # fmt: skip
    assert reply["ok"], reply
    return code


async def yookassa_subscription(
    bus: Bus, relay: Relay, fake: FakeYooKassa, user: str, code: str
) -> str:
    """A live YooKassa subscription, its first payment made through the redirect."""
    reply = await bus.call("billing.subscription.create", {
        "idempotency_key": key(), "user_id": user, "plan_code": code,
        "payment_source": "yookassa", "return_url": "https://shop/back"})  # fmt: skip
    assert reply["ok"], reply
    sub_id = str(reply["data"]["subscription"]["id"])
    [first] = [p for p in fake.payments.values() if p["metadata"].get("user_id") == user
               and p["status"] == "pending"]  # fmt: skip
    fake.pay(first["id"])
    notification = fake.notification("payment.succeeded", first["id"])
    assert (await relay.yookassa(notification)).status_code == 200
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    return sub_id


async def test_a_yookassa_subscription_renews_on_its_updated_method(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    user = new_user()
    sub_id = await yookassa_subscription(bus, relay, fake, user, await plan(bus))
    [first] = [m["payment_method_id"] for m in await listing(bus, user)]
    # a second card is saved by a setup: a deposit would charge the default now
    second = await yookassa_setup_saved(bus, relay, fake, user)

    updated = await bus.call(
        UPDATE,
        {
            "idempotency_key": key(),
            "user_id": user,
            "subscription_id": sub_id,
            "payment_method_id": second,
        },
    )

    assert updated["ok"], updated
    got = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    clock.set(datetime.fromisoformat(got["data"]["current_period_end"]))
    assert (await worker.renewals.run_once())["charged"] == 1
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)
    renewal = [p for p in fake.payments.values() if p["metadata"].get("user_id") == user][-1]
    assert renewal["payment_method"]["id"] == second != first

    # once detached, the method is never charged again: the next renewal has none
    assert (await change(bus, DETACH, user, "yookassa", second))["ok"]
    payments = len(fake.payments)
    got = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    clock.set(datetime.fromisoformat(got["data"]["current_period_end"]))
    await worker.renewals.run_once()
    assert len(fake.payments) == payments
    await bus.event("subscription.past_due", lambda d: d["subscription_id"] == sub_id)
