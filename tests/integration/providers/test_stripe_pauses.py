"""Resume, pause, unpause and seats of Stripe-run subscriptions, through the Stripe fake
(the real SDK over HTTP), the worker and RabbitMQ on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from billing_worker.app import Worker
from fakes.stripe_api import FakeStripe, Hold
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


# ---- a webhook's re-read racing a change the worker asked for -----------------------
#
# Stripe's own webhook of a change (or of anything else) makes the worker re-read the
# subscription, and that read may be served before or after Stripe applies a change the
# worker is asking for at the same moment. Whichever order the two answers come in, ours
# must end as Stripe ends, the change's reply must say what Stripe answered, and no
# event may be announced for a state Stripe has already left.


async def applied(worker: Worker, event: bytes) -> None:
    """Until the worker has applied the webhook `event` (its id is recorded with it)."""
    event_id = json.loads(event)["id"]

    async def recorded() -> bool:
        async with worker.engine.connect() as db:
            found = await db.execute(
                text("SELECT 1 FROM idempotency_records WHERE key = :key"), {"key": event_id}
            )
            return found.first() is not None

    async with asyncio.timeout(30):
        while not await recorded():
            await asyncio.sleep(0.05)


async def paused_subscription(
    bus: Bus, relay: Relay, worker: Worker, fake: FakeStripe, user: str
) -> tuple[str, str, int]:
    """A paused Stripe subscription: ours, Stripe's path of it, and how many times the
    worker reads it from Stripe for one webhook (the last of those reads is applied)."""
    sub = await stripe_subscription(bus, user)
    paused = await change(bus, "pause", user, sub["id"])
    assert paused["data"]["status"] == "paused", paused
    await bus.event("subscription.paused", lambda d: d["subscription_id"] == sub["id"])
    path, reads = await reads_per_webhook(relay, worker, fake, user)
    return sub["id"], path, reads


async def reads_per_webhook(
    relay: Relay, worker: Worker, fake: FakeStripe, user: str
) -> tuple[str, int]:
    """Stripe's path of the user's subscription, and how many times the worker reads it
    for a webhook (Stripe's of the last change, which tells nothing new)."""
    path = f"/v1/subscriptions/{at_stripe(fake, user)['id']}"
    before = len(fake.calls("GET", path))
    told = fake.event("customer.subscription.updated", at_stripe(fake, user))
    assert (await relay.stripe(told)).status_code == 200
    await applied(worker, told)
    reads = len(fake.calls("GET", path)) - before
    assert reads >= 1
    return path, reads


async def ours(bus: Bus, user: str, sub_id: str) -> dict[str, Any]:
    """Our copy of the subscription, as billing.subscription.get answers it."""
    reply = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def held_change(
    bus: Bus, fake: FakeStripe, path: str, verb: str, user: str, sub_id: str, *,
    answered: bool = False, **extra: Any,
) -> tuple[Hold, asyncio.Task[dict[str, Any]]]:  # fmt: skip
    """A change command whose call to Stripe is held (before Stripe applies it, or after
    with its answer not yet sent): the hold, reached, and the command's reply to come."""
    held = fake.hold("POST", path, answered=answered)
    replying = asyncio.create_task(change(bus, verb, user, sub_id, **extra))
    await held.reached()
    return held, replying


async def held_webhook_read(
    relay: Relay, fake: FakeStripe, user: str, path: str, reads: int
) -> tuple[bytes, Hold]:
    """Stripe's webhook of the subscription, whose read the worker applies is served now
    and its answer held: the webhook, and the hold, reached."""
    held = fake.hold("GET", path, answered=True, skip=reads - 1)
    told = fake.event("customer.subscription.updated", at_stripe(fake, user))
    assert (await relay.stripe(told)).status_code == 200
    await held.reached()
    return told, held


async def test_a_webhook_read_served_before_the_unpause_does_not_undo_its_answer(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub_id, path, _ = await paused_subscription(bus, relay, worker, fake, user)
    # Stripe has not applied the unpause yet
    unpause_held, unpausing = await held_change(bus, fake, path, "unpause", user, sub_id)

    # Stripe's webhook of something else: its re-read begins after the unpause was
    # sent, is served before Stripe applies it (still paused) and is applied first.
    told = fake.event("customer.subscription.updated", at_stripe(fake, user))
    assert (await relay.stripe(told)).status_code == 200
    await applied(worker, told)
    unpause_held.release()
    unpaused = await unpausing

    assert unpaused["ok"], unpaused
    assert unpaused["data"]["status"] == "active"  # what Stripe answered
    assert at_stripe(fake, user)["pause_collection"] is None
    assert (await ours(bus, user, sub_id))["status"] == "active"
    await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub_id)


async def test_a_webhook_read_answered_after_the_unpause_does_not_pause_ours_again(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub_id, path, reads = await paused_subscription(bus, relay, worker, fake, user)
    unpause_held, unpausing = await held_change(bus, fake, path, "unpause", user, sub_id)
    # The read applied begins before the unpause is answered, its answer is sent after.
    told, read_held = await held_webhook_read(relay, fake, user, path, reads)

    unpause_held.release()
    unpaused = await unpausing  # answered and committed while the stale read is in flight
    assert unpaused["data"]["status"] == "active", unpaused
    read_held.release()
    await applied(worker, told)

    assert (await ours(bus, user, sub_id))["status"] == "active"  # as at Stripe
    await bus.event("subscription.resumed", lambda d: d["subscription_id"] == sub_id)
    await asyncio.sleep(0.5)  # a second `paused` would come from the stale read's commit
    assert len(bus.events_of("subscription.paused", lambda d: d["subscription_id"] == sub_id)) == 1


async def test_a_change_made_at_stripe_during_the_unpause_is_not_lost(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub_id, path, reads = await paused_subscription(bus, relay, worker, fake, user)
    unpause_held, unpausing = await held_change(  # applied, its answer not yet sent
        bus, fake, path, "unpause", user, sub_id, answered=True
    )
    # Someone sets the period-end cancel in Stripe's dashboard after the unpause; its
    # webhook's re-read begins before the unpause is answered and sees both.
    at_stripe(fake, user)["cancel_at_period_end"] = True
    told, read_held = await held_webhook_read(relay, fake, user, path, reads)

    unpause_held.release()
    unpaused = await unpausing
    assert unpaused["data"]["status"] == "active", unpaused
    read_held.release()
    await applied(worker, told)

    found = await ours(bus, user, sub_id)
    assert (found["status"], found["cancel_at_period_end"]) == ("active", True)


async def test_a_webhook_read_answered_after_a_period_end_cancel_does_not_undo_it(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    sub = await stripe_subscription(bus, user)
    path, reads = await reads_per_webhook(relay, worker, fake, user)
    cancel_held, canceling = await held_change(
        bus, fake, path, "cancel", user, sub["id"], at_period_end=True
    )
    told, read_held = await held_webhook_read(relay, fake, user, path, reads)  # before it

    cancel_held.release()
    canceled = await canceling
    assert canceled["data"]["cancel_at_period_end"] is True, canceled
    read_held.release()
    await applied(worker, told)

    found = await ours(bus, user, sub["id"])
    assert (found["status"], found["cancel_at_period_end"]) == ("active", True)
    await asyncio.sleep(0.5)  # a `resumed` (cancel undone) would come from the stale read
    assert bus.events_of("subscription.resumed", lambda d: d["subscription_id"] == sub["id"]) == []
