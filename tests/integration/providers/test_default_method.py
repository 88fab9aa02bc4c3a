"""A deposit or a subscription create that names no `payment_method_id` charges the
user's live default method at its provider (YooKassa: as a saved method, no redirect;
Stripe: off-session with the default card of the user's customer); with no default, or
after the default was detached, it answers exactly as before (redirect, client_secret)."""

from __future__ import annotations

import uuid

import pytest

from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.methods_kit import (
    DETACH,
    change,
    deposit,
    key,
    new_user,
    stripe_saved,
    yookassa_setup_saved,
)
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration
BACK = "https://shop.example/back"


def payments_of(fake: FakeYooKassa, user: str) -> list[dict[str, object]]:
    return [p for p in fake.payments.values() if (p.get("metadata") or {}).get("user_id") == user
            and not p["metadata"].get("setup_id")]  # fmt: skip


async def test_a_yookassa_deposit_without_a_method_charges_the_default_and_none_after_detach(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    method = await yookassa_setup_saved(bus, relay, fake, user)

    charged = await deposit(bus, user, "yookassa", "100.00", "RUB", return_url=BACK)

    assert charged["ok"], charged
    assert charged["data"]["payment_action"] is None  # no redirect
    assert charged["data"]["payment_method_id"] == method
    assert charged["data"]["transaction"]["status"] == "completed"
    [payment] = payments_of(fake, user)
    assert payment["payment_method"]["id"] == method
    assert "confirmation" not in payment

    assert (await change(bus, DETACH, user, "yookassa", method))["ok"]
    again = await deposit(bus, user, "yookassa", "100.00", "RUB", return_url=BACK)

    assert again["ok"], again
    assert again["data"]["payment_action"]["type"] == "redirect"  # as before: no default
    assert again["data"]["payment_method_id"] is None


async def test_a_yookassa_deposit_of_a_user_with_no_default_redirects_as_before(
    bus: Bus, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()

    reply = await deposit(bus, user, "yookassa", "100.00", "RUB", return_url=BACK)

    assert reply["ok"], reply
    assert reply["data"]["payment_action"]["type"] == "redirect"
    assert reply["data"]["payment_method_id"] is None
    [payment] = payments_of(fake, user)
    assert payment["status"] == "pending"


async def test_a_stripe_deposit_without_a_method_charges_the_default_off_session(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, stranger = new_user(), new_user()
    method = await stripe_saved(bus, relay, fake, user, "pm_card_mastercard")

    charged = await deposit(bus, user, "stripe", "10.00", "USD")
    plain = await deposit(bus, stranger, "stripe", "10.00", "USD")

    assert charged["ok"], charged
    assert charged["data"]["payment_action"] is None
    assert charged["data"]["payment_method_id"] == method
    [intent] = [pi for pi in fake.payment_intents.values()
                if pi["metadata"].get("user_id") == user]  # fmt: skip
    assert intent["payment_method"] == method
    assert intent["status"] == "succeeded"
    assert plain["data"]["payment_action"]["type"] == "client_secret"  # as before
    assert plain["data"]["payment_method_id"] is None


async def test_a_subscription_create_without_a_method_uses_the_default(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    stripe, _ = stripe_fake
    yookassa, _ = yookassa_fake
    user = new_user()
    card = await stripe_saved(bus, relay, stripe, user, "pm_card_mastercard")
    method = await yookassa_setup_saved(bus, relay, yookassa, user)
    codes = {}
    for source in ("yookassa", "stripe"):
        codes[source] = f"plan-{uuid.uuid4().hex[:8]}"
        assert (await bus.call("billing.plan.upsert", {
            "idempotency_key": key(), "code": codes[source], "name": "Pro", "interval": "month",
            "price": {"amount": "499.00", "currency": "RUB"},
            "stripe_price_id": "price_pro_monthly"}))["ok"]  # fmt: skip

    def create(source: str) -> dict[str, str]:
        return {"idempotency_key": key(), "user_id": user, "plan_code": codes[source],
                "payment_source": source, "return_url": BACK}  # fmt: skip

    at_yookassa = await bus.call("billing.subscription.create", create("yookassa"))
    at_stripe = await bus.call("billing.subscription.create", create("stripe"))

    assert at_yookassa["ok"], at_yookassa
    assert at_yookassa["data"]["payment_action"] is None  # charged with the card, no redirect
    [first] = payments_of(yookassa, user)
    assert first["payment_method"]["id"] == method
    assert at_stripe["ok"], at_stripe
    [remote] = [s for s in stripe.subscriptions.values() if s["metadata"].get("user_id") == user]
    assert remote["default_payment_method"] == card
