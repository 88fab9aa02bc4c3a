"""Saved payment methods end to end, Stripe and the sandbox: setup, list, detach, default.

Stripe through its SDK against the HTTP fake (SetupIntents, PaymentMethods, customers);
a method is saved only on what Stripe itself confirms, for the user whose customer it is
(YooKassa's are in test_payment_methods_yookassa.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from fakes.stripe_api import FakeStripe
from support.methods_kit import (
    DEFAULT,
    DETACH,
    SETUP,
    UPDATE,
    change,
    deposit,
    key,
    listing,
    new_user,
    not_found,
    stripe_saved,
    stripe_setup,
)
from support.relay import Relay
from support.rpc import Bus
from support.snapshot import state_of

pytestmark = pytest.mark.integration


# --- Stripe ----------------------------------------------------------------------------


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


async def test_a_stripe_subscription_is_moved_to_another_of_its_owners_cards_at_stripe(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    first = await stripe_saved(bus, relay, fake, owner)
    code = f"plan-{key()[:8]}"
    assert (await bus.call("billing.plan.upsert", {
        "idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "10.00", "currency": "USD"},
        "stripe_price_id": "price_pro_monthly"}))["ok"]  # fmt: skip
    created = await bus.call("billing.subscription.create", {
        "idempotency_key": key(), "user_id": owner, "plan_code": code,
        "payment_source": "stripe", "payment_method_id": first})  # fmt: skip
    assert created["ok"], created
    sub_id = created["data"]["subscription"]["id"]
    [remote] = [s for s in fake.subscriptions.values() if s["metadata"].get("user_id") == owner]
    second = await stripe_saved(bus, relay, fake, owner, "pm_card_mastercard")
    theirs = await stripe_saved(bus, relay, fake, attacker)

    def update(user: str, method: str) -> dict[str, Any]:
        return {"idempotency_key": key(), "user_id": user, "subscription_id": sub_id,
                "payment_method_id": method}  # fmt: skip

    refused = await bus.call(UPDATE, update(owner, theirs))  # another user's card
    assert not_found(refused, theirs, "stripe")
    assert (await bus.call(UPDATE, update(attacker, theirs)))["error"]["code"] == "not_found"
    assert remote["default_payment_method"] == first

    moved = await bus.call(UPDATE, update(owner, second))

    assert moved["ok"], moved
    assert moved["data"]["id"] == sub_id
    assert remote["default_payment_method"] == second


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


async def test_concurrent_set_defaults_leave_exactly_one_default(bus: Bus, worker: Worker) -> None:
    user = new_user()
    refs = []
    for _ in range(3):
        reply = await bus.call(SETUP, {"idempotency_key": key(), "user_id": user,
                                       "provider": "sandbox"})  # fmt: skip
        refs.append(reply["data"]["payment_method"]["payment_method_id"])

    replies = await asyncio.gather(
        *(change(bus, DEFAULT, user, "sandbox", refs[i % 3]) for i in range(12))
    )

    assert all(reply["ok"] for reply in replies), replies
    defaults = [m["payment_method_id"] for m in await listing(bus, user) if m["is_default"]]
    assert len(defaults) == 1
    async with driver_connection(worker.engine) as db:
        rows = await db.fetchval(
            "SELECT count(*) FROM payment_methods WHERE user_id = $1 AND is_default", user
        )
    assert rows == 1
