"""Saved payment methods end to end: setup, list, detach, default, a subscription's method.

Stripe through its SDK against the HTTP fake (SetupIntents, PaymentMethods, customers),
YooKassa's cards saved by a payment, the sandbox's test card; each method is usable by its
owner only, and saved only on what the provider itself confirms.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.relay import Relay
from support.rpc import Bus
from support.snapshot import state_of

pytestmark = pytest.mark.integration

SETUP, LIST = "billing.payment-method.setup", "billing.payment-method.list"
DETACH, DEFAULT = "billing.payment-method.detach", "billing.payment-method.set-default"
UPDATE = "billing.subscription.update-payment-method"
DEPOSIT = "billing.wallet.deposit"


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


def new_user(role: str = "u") -> str:
    return f"pmx-{role}-{uuid.uuid4().hex[:8]}"


async def listing(bus: Bus, user: str, provider: str | None = None) -> list[dict[str, Any]]:
    query = {"user_id": user} | ({"provider": provider} if provider else {})
    reply = await bus.call(LIST, query)
    assert reply["ok"], reply
    return reply["data"]["items"]  # type: ignore[no-any-return]


async def change(bus: Bus, queue: str, user: str, provider: str, method: str) -> dict[str, Any]:
    return await bus.call(queue, {"idempotency_key": key(), "user_id": user,
                                  "provider": provider, "payment_method_id": method})  # fmt: skip


async def deposit(
    bus: Bus, user: str, provider: str, amount: str, currency: str, **extra: str
) -> dict[str, Any]:
    money = {"amount": amount, "currency": currency}
    return await bus.call(DEPOSIT, {"idempotency_key": key(), "user_id": user,
                                    "provider": provider, "amount": money, **extra})  # fmt: skip


def not_found(reply: dict[str, Any], method: str, provider: str) -> bool:
    return reply == {"ok": False, "error": {
        "code": "not_found", "message": f"no saved {provider} payment method {method}",
        "details": {"payment_method_id": method}}}  # fmt: skip


# --- Stripe ----------------------------------------------------------------------------


async def stripe_setup(bus: Bus, fake: FakeStripe, user: str) -> dict[str, Any]:
    """A setup for the user: the SetupIntent Stripe made for the user's customer."""
    reply = await bus.call(SETUP, {"idempotency_key": key(), "user_id": user,
                                   "provider": "stripe"})  # fmt: skip
    assert reply["ok"], reply
    assert reply["data"]["status"] == "pending"
    secret = reply["data"]["payment_action"]["client_secret"]
    [seti] = [s for s in fake.setup_intents.values() if s["client_secret"] == secret]
    return seti


async def stripe_saved(bus: Bus, relay: Relay, fake: FakeStripe, user: str,
                       card: str = "pm_card_visa") -> str:  # fmt: skip
    seti = await stripe_setup(bus, fake, user)
    method = fake.confirm_setup(seti["id"], card)
    response = await relay.stripe(
        fake.event("setup_intent.succeeded", fake.setup_intents[seti["id"]])
    )
    assert response.status_code == 200
    await bus.event("payment_method.saved",
                    lambda d: d["payment_method"]["payment_method_id"] == method)  # fmt: skip
    return method


async def test_a_stripe_setup_saves_the_card_once_stripe_confirms_it(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()

    seti = await stripe_setup(bus, fake, user)

    [customer] = [c for c in fake.customers.values() if c["metadata"]["user_id"] == user]
    assert seti["customer"] == customer["id"]
    assert seti["usage"] == "off_session"
    assert seti["metadata"]["user_id"] == user
    # a callback claiming success while the card still needs 3-D Secure: Stripe's
    # SetupIntent has the card, but has not succeeded
    fake.confirm_setup(seti["id"], "pm_card_authenticationRequired")
    forged = dict(fake.setup_intents[seti["id"]], status="succeeded")
    assert (await relay.stripe(fake.event("setup_intent.succeeded", forged))).status_code == 200
    # and one naming a SetupIntent Stripe never made
    unknown = dict(forged, id="seti_forged", payment_method="pm_card_visa")
    assert (await relay.stripe(fake.event("setup_intent.succeeded", unknown))).status_code == 200

    assert await listing(bus, user) == []
    method = fake.confirm_setup(seti["id"], "pm_card_mastercard")
    # the callback's body lies about the card: the list shows Stripe's PaymentMethod
    body = dict(fake.setup_intents[seti["id"]], payment_method="pm_card_visa")
    webhook = fake.event("setup_intent.succeeded", body)
    assert (await relay.stripe(webhook)).status_code == 200
    assert (await relay.stripe(webhook)).status_code == 200  # redelivered

    saved = await bus.event("payment_method.saved", lambda d: d["user_id"] == user)
    [item] = await listing(bus, user)
    assert item == saved["data"]["payment_method"]
    assert item | {"created_at": None} == {
        "payment_method_id": method, "provider": "stripe", "brand": "mastercard",
        "last4": "4444", "exp_month": 12, "exp_year": 2034, "is_default": True,
        "created_at": None,
    }  # fmt: skip
    assert len(bus.events_of("payment_method.saved", lambda d: d["user_id"] == user)) == 1


async def test_a_setup_intent_of_another_users_customer_saves_nothing(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    await stripe_saved(bus, relay, fake, attacker)  # a billing user with a card of their own
    own = await stripe_setup(bus, fake, owner)
    # a SetupIntent for the owner's customer whose metadata names the attacker (made
    # outside billing): the card would be the owner's
    fake.setup_intents[own["id"]]["metadata"]["user_id"] = attacker
    fake.confirm_setup(own["id"])
    async with driver_connection(worker.engine) as db:
        before = await state_of(db, [attacker])

    webhook = fake.event("setup_intent.succeeded", fake.setup_intents[own["id"]])
    assert (await relay.stripe(webhook)).status_code == 200
    # a later event shows the first was handled (the queue is in order per consumer)
    await stripe_saved(bus, relay, fake, owner)

    assert len(await listing(bus, attacker)) == 1  # their own only
    assert len(await listing(bus, owner)) == 1  # only the one set up for the owner
    async with driver_connection(worker.engine) as db:
        assert await state_of(db, [attacker]) == before


async def test_stripe_default_and_detach_reach_stripe_and_a_detached_card_is_not_charged(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    first = await stripe_saved(bus, relay, fake, user)
    second = await stripe_saved(bus, relay, fake, user, "pm_card_mastercard")
    [customer] = [c for c in fake.customers.values() if c["metadata"]["user_id"] == user]
    assert [(m["payment_method_id"], m["is_default"]) for m in await listing(bus, user)] == [
        (first, True), (second, False)]  # fmt: skip

    made = await change(bus, DEFAULT, user, "stripe", second)

    assert made["ok"], made
    assert made["data"]["is_default"]
    assert customer["invoice_settings"]["default_payment_method"] == second
    assert [(m["payment_method_id"], m["is_default"]) for m in await listing(bus, user)] == [
        (first, False), (second, True)]  # fmt: skip

    removed = await change(bus, DETACH, user, "stripe", second)

    assert removed["ok"], removed
    assert second not in fake.attached_methods
    await bus.event("payment_method.removed",
                    lambda d: d["payment_method"]["payment_method_id"] == second)  # fmt: skip
    assert [(m["payment_method_id"], m["is_default"]) for m in await listing(bus, user)] == [
        (first, False)
    ]  # fmt: skip  (detaching the default leaves none)
    again = await change(bus, DETACH, user, "stripe", second)
    assert not_found(again, second, "stripe")
    charged = await deposit(bus, user, "stripe", "5.00", "USD", payment_method_id=second)
    assert charged["error"]["code"] == "provider_error", charged
    assert not [pi for pi in fake.payment_intents.values() if pi["payment_method"] == second]


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
    setup = await bus.call(SETUP, {"idempotency_key": key(), "user_id": user,
                                   "provider": "yookassa"})  # fmt: skip
    assert setup["error"]["code"] == "provider_error", setup

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
    second = await yookassa_saved(bus, relay, fake, user)

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


# --- the sandbox -----------------------------------------------------------------------


async def test_the_sandbox_saves_a_test_card_at_once(bus: Bus) -> None:
    user = new_user()
    command = {"idempotency_key": key(), "user_id": user, "provider": "sandbox"}

    reply = await bus.call(SETUP, command)

    assert reply["ok"], reply
    assert reply["data"]["status"] == "saved"
    saved = reply["data"]["payment_method"]
    assert (saved["last4"], saved["is_default"]) == ("4242", True)
    assert await listing(bus, user) == [saved]
    assert await bus.call(SETUP, command) == reply  # the same key: the same answer
    assert len(await listing(bus, user)) == 1
