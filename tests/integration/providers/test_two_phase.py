"""Provider calls in two phases: the intent commits, the provider is asked with no
database transaction open, its answer commits with the reply.

What happens between the phases: a redelivery continues the intent (same idempotency
key: one payment); a different payload under the same key is a conflict; a command all
of whose deliveries failed is finished by the reconciler, whose reply the command then
gets; a YooKassa renewal left half done is charged once, by the reconciler; a Stripe
read applied out of order never moves a subscription back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.intents import Intent
from billing_worker.db.uow import UnitOfWork
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import stripe_subscriptions
from billing_worker.handlers.renewals import renew_next
from billing_worker.providers.base import ProviderSubscription
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.relay import WEBHOOK_SECRET, Relay
from support.rpc import Bus
from support.settings import make_settings
from support.snapshot import assert_ledger_sound

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"
SUBSCRIBE = "billing.subscription.create"
CANCEL = "billing.subscription.cancel"
HOLD = 3600.0


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the reconciler and the scheduler see every row."""
    return fresh_database_url


@pytest.fixture
def settings(
    database_url: str,
    rabbitmq_url: str,
    stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Settings:
    return make_settings(
        database_url,
        rabbitmq_url,
        stripe_api_key="sk_test_billing",
        stripe_api_base=stripe_fake[1],
        stripe_webhook_secret=WEBHOOK_SECRET,
        yookassa_account_id="123456",
        yookassa_secret_key="test_secret",
        yookassa_api_url=f"{yookassa_fake[1]}/v3",
        default_provider="sandbox",
        provider_timeout_seconds=30.0,  # a held answer is slow, not failed
        max_deliveries=3,
        trusted_proxies=("10.0.0.0/8",),
        reconcile_after_seconds=3600,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def key() -> str:
    return uuid.uuid4().hex


def new_user() -> str:
    return f"twophase-{uuid.uuid4().hex[:8]}"


def stripe_deposit(user: str, amount: str = "20.00", **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "provider": "stripe",
            "amount": {"amount": amount, "currency": "USD"},
            "payment_method_id": "pm_card_visa", **extra}  # fmt: skip


async def plan(bus: Bus, currency: str = "USD", price: str = "10.00", **terms: Any) -> str:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": price, "currency": currency}, **terms},
    )  # fmt: skip
    assert reply["ok"], reply
    return code


async def until(condition: Any, what: str, timeout: float = 15.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def intents(worker: Worker) -> list[Any]:
    async with driver_connection(worker.engine) as db:
        return list(await db.fetch("SELECT id, kind FROM provider_intents"))


async def test_a_duplicate_continues_the_intent_and_another_payload_under_its_key_conflicts(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    assert (await bus.call(DEPOSIT, stripe_deposit(user)))["ok"]  # the Stripe customer
    fake.delay_seconds = HOLD
    command = stripe_deposit(user)
    first = asyncio.create_task(bus.call(DEPOSIT, command, timeout=30))
    await until(lambda: fake.holding == 1, "the deposit to be at Stripe")
    assert [row["kind"] for row in await intents(worker)] == ["deposit"]

    changed = command | {"amount": {"amount": "99.00", "currency": "USD"}}
    conflict = await bus.call(DEPOSIT, changed)  # answered while the first is at Stripe
    duplicate = asyncio.create_task(bus.call(DEPOSIT, command, timeout=30))
    await until(lambda: fake.holding == 2, "the duplicate to ask Stripe again")
    assert not first.done()
    fake.delay_seconds = 0

    assert conflict["error"]["code"] == "idempotency_conflict", conflict
    one, two = await first, await duplicate
    assert one == two
    assert one["ok"], one
    assert one["data"]["transaction"]["status"] == "completed"
    ours = [pi for pi in fake.payment_intents.values() if pi["metadata"]["user_id"] == user]
    assert len(ours) == 2  # the customer's first deposit and this one: no second payment
    assert await intents(worker) == []
    await bus.event("deposit.completed", lambda d: d["user_id"] == user, count=2)
    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 2
    async with driver_connection(worker.engine) as db:
        await assert_ledger_sound(db, [user])


async def test_a_stripe_outage_between_the_phases_is_continued_by_the_redelivery(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    assert (await bus.call(DEPOSIT, stripe_deposit(user)))["ok"]  # the Stripe customer
    fake.fail_next(500)  # the subscription create: the first delivery fails after phase one

    reply = await bus.call(
        SUBSCRIBE,
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa"},
    )  # fmt: skip

    assert reply["ok"], reply
    assert reply["data"]["subscription"]["status"] == "active"
    mine = [s for s in fake.subscriptions.values() if s["metadata"]["user_id"] == user]
    assert len(mine) == 1
    assert await intents(worker) == []


async def test_a_command_whose_every_delivery_failed_is_finished_by_the_reconciler(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    assert (await bus.call(DEPOSIT, stripe_deposit(user)))["ok"]  # the Stripe customer
    command = {"idempotency_key": key(), "user_id": user, "plan_code": code,
               "payment_source": "stripe", "payment_method_id": "pm_card_visa"}  # fmt: skip
    fake.fail_next(500, n=worker.settings.max_deliveries)

    gave_up = await bus.call(SUBSCRIBE, command)

    assert gave_up["error"]["code"] == "internal_error", gave_up
    assert [row["kind"] for row in await intents(worker)] == ["stripe_subscription"]
    worker.reconciler.after_seconds = 0
    assert await worker.reconciler.run_once() == 1
    assert await intents(worker) == []
    [remote] = [s for s in fake.subscriptions.values() if s["metadata"]["user_id"] == user]
    again = await bus.call(SUBSCRIBE, command)  # the client tries again: the stored reply
    assert again["ok"], again
    assert again["data"]["subscription"]["status"] == "active"
    assert again["data"]["subscription"]["id"] == remote["metadata"]["subscription_id"]
    assert len([s for s in fake.subscriptions.values() if s["metadata"]["user_id"] == user]) == 1
    assert await worker.reconciler.run_once() == 0


async def test_a_second_cancel_is_refused_while_stripe_is_still_canceling(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    created = await bus.call(
        SUBSCRIBE,
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa"},
    )  # fmt: skip
    sub_id = created["data"]["subscription"]["id"]
    fake.delay_seconds = HOLD
    cancel = {"idempotency_key": key(), "user_id": user, "subscription_id": sub_id,
              "at_period_end": False}  # fmt: skip
    first = asyncio.create_task(bus.call(CANCEL, cancel, timeout=30))
    await until(lambda: fake.holding == 1, "the cancel to be at Stripe")

    other = await bus.call(CANCEL, cancel | {"idempotency_key": key()})  # meanwhile
    balance = await bus.call("billing.wallet.balance", {"user_id": user})
    fake.delay_seconds = 0

    assert other["error"]["code"] == "invalid_state", other
    assert balance["ok"]
    done = await first
    assert done["ok"], done
    assert done["data"]["status"] == "canceled"
    [remote] = [s for s in fake.subscriptions.values() if s["metadata"]["user_id"] == user]
    assert remote["status"] == "canceled"


async def test_a_yookassa_renewal_left_between_its_phases_is_charged_once_by_the_reconciler(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    user, code = new_user(), await plan(bus, "RUB", "499.00")
    data = await bus.call(
        SUBSCRIBE,
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "yookassa", "return_url": "https://shop.example/back"},
    )  # fmt: skip
    sub_id = data["data"]["subscription"]["id"]
    [first] = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    fake.pay(first["id"])
    notified = await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    assert notified.status_code == 200
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    sub = (await bus.call("billing.subscription.get",
                          {"user_id": user, "subscription_id": sub_id}))["data"]  # fmt: skip
    clock.set(datetime.fromisoformat(sub["current_period_end"]))

    # Phase one of the renewal commits; the scheduler's replica dies before asking YooKassa.
    intent = await worker.service.apply([], renew_next)
    assert isinstance(intent, Intent)
    assert intent.kind == "yookassa_renewal"

    assert await worker.renewals.run_once() == {}  # the charge in flight: not due again
    refused = await bus.call(
        CANCEL, {"idempotency_key": key(), "user_id": user, "subscription_id": sub_id,
                 "at_period_end": False},
    )  # fmt: skip
    assert refused["error"]["code"] == "invalid_state", refused
    assert len([p for p in fake.payments.values() if p["metadata"]["user_id"] == user]) == 1
    worker.reconciler.after_seconds = 0
    assert await worker.reconciler.run_once() == 1

    renewed = (await bus.call("billing.subscription.get",
                              {"user_id": user, "subscription_id": sub_id}))["data"]  # fmt: skip
    assert renewed["status"] == "active"
    assert renewed["current_period_start"] == sub["current_period_end"]
    charges = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    assert len(charges) == 2
    assert charges[1]["metadata"]["transaction_id"] == str(intent.id)
    assert await worker.reconciler.run_once() == 0
    assert await worker.renewals.run_once() == {}  # paid: nothing due
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)
    async with driver_connection(worker.engine) as db:
        assert await db.fetchval(
            "SELECT count(*) FROM subscription_charges WHERE subscription_id = $1",
            uuid.UUID(sub_id),
        ) == 2  # fmt: skip
        await assert_ledger_sound(db, [user])


async def test_a_stripe_read_applied_out_of_order_does_not_move_the_subscription_back(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    created = await bus.call(
        SUBSCRIBE,
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa"},
    )  # fmt: skip
    sub_id = created["data"]["subscription"]["id"]
    [ref] = [s["id"] for s in fake.subscriptions.values() if s["metadata"]["user_id"] == user]
    earlier = datetime.now(UTC)
    active = await worker.reconciler.gateways.get("stripe").fetch_subscription(ref)  # type: ignore[attr-defined]
    canceled = dataclasses.replace(active, status="canceled")
    assert isinstance(canceled, ProviderSubscription)

    async def apply(remote: ProviderSubscription, at: datetime) -> None:
        event = ProviderEvent(
            provider="stripe",
            event_id=key(),
            outcome=None,
            provider_ref=None,
            event_type="customer.subscription.updated",
            subscription_ref=ref,
        )
        async with driver_connection(worker.engine) as db:
            uow = UnitOfWork(db)
            async with db.transaction():
                fetched = stripe_subscriptions.Fetched(remote, at)
                await stripe_subscriptions.sync(event, fetched, uow, worker.service.deps)
                await uow.flush()

    await apply(canceled, earlier + timedelta(seconds=1))  # the later read, applied first
    await apply(active, earlier)  # the earlier read, applied after it: changes nothing

    got = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    assert got["data"]["status"] == "canceled", got
