"""Resume, pause, unpause and seats of Stripe-run subscriptions, through the Stripe fake
(the real SDK over HTTP), the worker and RabbitMQ on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fakes.stripe_api import FakeStripe
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


def key() -> str:
    return uuid.uuid4().hex


def new_user() -> str:
    return f"spause-{uuid.uuid4().hex[:8]}"


async def stripe_subscription(bus: Bus, user: str, **extra: Any) -> dict[str, Any]:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    plan = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": "10.00", "currency": "USD"},
         "stripe_price_id": "price_pro_monthly"},
    )  # fmt: skip
    assert plan["ok"], plan
    reply = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa", **extra},
    )  # fmt: skip
    assert reply["ok"], reply
    assert reply["data"]["subscription"]["status"] == "active"
    return reply["data"]["subscription"]  # type: ignore[no-any-return]


async def change(bus: Bus, verb: str, user: str, sub_id: str, **extra: Any) -> dict[str, Any]:
    return await bus.call(
        f"billing.subscription.{verb}",
        {"idempotency_key": key(), "user_id": user, "subscription_id": sub_id, **extra},
    )


def at_stripe(fake: FakeStripe, user: str) -> dict[str, Any]:
    [sub] = [s for s in fake.subscriptions.values() if s["metadata"].get("user_id") == user]
    return sub


async def test_resume_sets_cancel_at_period_end_false_at_stripe(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub = await stripe_subscription(bus, user)
    await change(bus, "cancel", user, sub["id"], at_period_end=True)
    assert at_stripe(fake, user)["cancel_at_period_end"] is True

    resumed = await change(bus, "resume", user, sub["id"])

    assert resumed["ok"], resumed
    assert resumed["data"]["cancel_at_period_end"] is False
    assert at_stripe(fake, user)["cancel_at_period_end"] is False
    event = await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub["id"])
    assert event["data"]["reason"] == "cancel_undone"


async def test_pause_and_unpause_set_and_unset_pause_collection_at_stripe(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub = await stripe_subscription(bus, user)
    until = (datetime.now(UTC) + timedelta(days=45)).replace(microsecond=0)

    paused = await change(bus, "pause", user, sub["id"], until=until.isoformat())

    assert paused["ok"], paused
    assert (paused["data"]["status"], paused["data"]["paused_until"]) == (
        "paused", until.isoformat().replace("+00:00", "Z"),
    )  # fmt: skip
    assert at_stripe(fake, user)["pause_collection"] == {
        "behavior": "void", "resumes_at": int(until.timestamp()),
    }  # fmt: skip
    await bus.event("subscription.paused", lambda d: d["subscription_id"] == sub["id"])
    # Stripe's own webhook of the change arrives afterwards and tells nothing twice
    updated = fake.event("customer.subscription.updated", at_stripe(fake, user))
    assert (await relay.stripe(updated)).status_code == 200

    unpaused = await change(bus, "unpause", user, sub["id"])

    assert unpaused["ok"], unpaused
    assert unpaused["data"]["status"] == "active"
    assert at_stripe(fake, user)["pause_collection"] is None
    await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub["id"])
    await asyncio.sleep(0.5)
    mine = bus.events_of("subscription.paused", lambda d: d["subscription_id"] == sub["id"])
    assert len(mine) == 1


async def test_pause_collection_set_in_stripe_s_dashboard_makes_ours_paused(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub = await stripe_subscription(bus, user)
    at_stripe(fake, user)["pause_collection"] = {"behavior": "void", "resumes_at": None}

    updated = fake.event("customer.subscription.updated", at_stripe(fake, user))
    assert (await relay.stripe(updated)).status_code == 200

    event = await bus.event("subscription.paused", lambda d: d["subscription_id"] == sub["id"])
    assert event["data"]["status"] == "paused"  # not past_due, as it was before
    assert bus.events_of("subscription.past_due", lambda d: d["subscription_id"] == sub["id"]) == []


async def test_a_stripe_subscription_of_several_seats_has_its_item_quantity(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()

    sub = await stripe_subscription(bus, user, quantity=4)

    assert sub["quantity"] == 4
    assert at_stripe(fake, user)["items"]["data"][0]["quantity"] == 4
    [invoice] = [i for i in fake.invoices.values()
                 if i["parent"]["subscription_details"]["subscription"]
                 == at_stripe(fake, user)["id"]]  # fmt: skip
    assert invoice["amount_paid"] == 4000
