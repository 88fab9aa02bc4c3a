"""Subscriptions paid by Stripe (driven by its webhooks) and by YooKassa (our scheduler)."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the renewal scheduler renews every due subscription."""
    return fresh_database_url


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
    return f"psub-{uuid.uuid4().hex[:8]}"


async def plan(bus: Bus, currency: str = "USD", price: str = "10.00", **terms: Any) -> str:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": price, "currency": currency}, **terms},
    )  # fmt: skip
    assert reply["ok"], reply
    return code


async def subscribe(bus: Bus, user: str, code: str, source: str, **extra: Any) -> dict[str, Any]:
    reply = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code, "payment_source": source,
         **extra},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def status_of(bus: Bus, user: str, subscription_id: str) -> dict[str, Any]:
    reply = await bus.call(
        "billing.subscription.get", {"user_id": user, "subscription_id": subscription_id}
    )
    return reply["data"]  # type: ignore[no-any-return]


async def eventually(bus: Bus, user: str, subscription_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        sub = await status_of(bus, user, subscription_id)
        if sub["status"] == status:
            return sub
        await asyncio.sleep(0.1)
    raise AssertionError(f"subscription stayed {sub['status']}, expected {status}")


def stripe_ref(fake: FakeStripe, user: str) -> str:
    [ref] = [s["id"] for s in fake.subscriptions.values() if s["metadata"].get("user_id") == user]
    return ref


# --- Stripe ---------------------------------------------------------------------------------


async def test_a_stripe_subscription_with_a_saved_card_is_active_at_once(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")

    data = await subscribe(bus, user, code, "stripe", payment_method_id="pm_card_visa")

    assert data["subscription"]["status"] == "active"
    assert data["payment_action"] is None
    ref = stripe_ref(fake, user)
    assert fake.subscriptions[ref]["items"]["data"][0]["price"]["id"] == "price_pro_monthly"
    await bus.event(
        "subscription.created", lambda d: d["subscription_id"] == data["subscription"]["id"]
    )


async def test_stripe_webhooks_drive_the_subscription_from_incomplete_to_canceled(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")

    data = await subscribe(bus, user, code, "stripe")  # no saved card: Stripe.js confirms

    sub_id = data["subscription"]["id"]
    assert data["subscription"]["status"] == "incomplete"
    assert data["payment_action"]["client_secret"]
    ref = stripe_ref(fake, user)
    first_invoice = fake.invoices[fake.subscriptions[ref]["latest_invoice"]]
    fake.succeed(fake._invoice_payment_intent[first_invoice["id"]])  # the customer paid
    paid = fake.event("invoice.paid", fake.invoices[first_invoice["id"]])
    assert (await relay.stripe(paid)).status_code == 200
    assert (await eventually(bus, user, sub_id, "active"))["status"] == "active"
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    await bus.event("payment.success", lambda d: d["user_id"] == user)

    # a month later Stripe renews it and tells us with invoice.paid
    item = fake.subscriptions[ref]["items"]["data"][0]
    item["current_period_start"] = item["current_period_end"]
    item["current_period_end"] += 30 * 86400
    renewal = copy.deepcopy(first_invoice) | {
        "id": f"in_{key()[:12]}",
        "status": "paid",
        "amount_paid": 1000,
        "billing_reason": "subscription_cycle",
    }
    fake.invoices[renewal["id"]] = renewal  # Stripe issued it (the worker re-reads it there)
    assert (await relay.stripe(fake.event("invoice.paid", renewal))).status_code == 200
    renewed = await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)
    assert renewed["data"]["current_period_end"] == (
        datetime.fromtimestamp(item["current_period_end"], UTC).isoformat().replace("+00:00", "Z")
    )

    # the next charge fails: Stripe marks it past_due
    fake.subscriptions[ref]["status"] = "past_due"
    failed = renewal | {
        "id": f"in_{key()[:12]}",
        "status": "open",
        "amount_paid": 0,
        "amount_due": 1000,
    }
    fake.invoices[failed["id"]] = failed
    assert (await relay.stripe(fake.event("invoice.payment_failed", failed))).status_code == 200
    await eventually(bus, user, sub_id, "past_due")
    await bus.event("subscription.past_due", lambda d: d["subscription_id"] == sub_id)
    await bus.event("payment.failed", lambda d: d["user_id"] == user)

    # Stripe gives up and deletes it
    fake.subscriptions[ref]["status"] = "canceled"
    deleted = fake.event("customer.subscription.deleted", fake.subscriptions[ref])
    assert (await relay.stripe(deleted)).status_code == 200
    await eventually(bus, user, sub_id, "canceled")
    await bus.event("subscription.canceled", lambda d: d["subscription_id"] == sub_id)


async def test_canceling_a_stripe_subscription_tells_stripe(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    code = await plan(bus, stripe_price_id="price_pro_monthly")
    later_user, now_user = new_user(), new_user()
    later = await subscribe(bus, later_user, code, "stripe", payment_method_id="pm_card_visa")
    now = await subscribe(bus, now_user, code, "stripe", payment_method_id="pm_card_visa")

    at_end = await bus.call(
        "billing.subscription.cancel",
        {
            "idempotency_key": key(),
            "user_id": later_user,
            "subscription_id": later["subscription"]["id"],
            "at_period_end": True,
        },
    )
    at_once = await bus.call(
        "billing.subscription.cancel",
        {
            "idempotency_key": key(),
            "user_id": now_user,
            "subscription_id": now["subscription"]["id"],
            "at_period_end": False,
        },
    )

    assert at_end["data"]["cancel_at_period_end"] is True
    assert fake.subscriptions[stripe_ref(fake, later_user)]["cancel_at_period_end"] is True
    assert at_once["data"]["status"] == "canceled"
    assert fake.subscriptions[stripe_ref(fake, now_user)]["status"] == "canceled"
    # Stripe's own deletion webhook arrives afterwards and changes nothing more
    deleted = fake.event(
        "customer.subscription.deleted", fake.subscriptions[stripe_ref(fake, now_user)]
    )
    assert (await relay.stripe(deleted)).status_code == 200
    await asyncio.sleep(0.5)
    sub_id = now["subscription"]["id"]
    assert (
        len(bus.events_of("subscription.canceled", lambda d: d["subscription_id"] == sub_id)) == 1
    )


async def test_a_plan_without_a_stripe_price_cannot_be_sold_through_stripe(bus: Bus) -> None:
    code = await plan(bus)
    reply = await bus.call(
        "billing.subscription.create",
        {
            "idempotency_key": key(),
            "user_id": new_user(),
            "plan_code": code,
            "payment_source": "stripe",
        },
    )
    assert reply["error"]["code"] == "provider_error"


# --- YooKassa --------------------------------------------------------------------------------


async def test_a_yookassa_subscription_saves_the_card_then_the_scheduler_renews_with_it(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    user, code = new_user(), await plan(bus, "RUB", "499.00")

    data = await subscribe(bus, user, code, "yookassa", return_url="https://shop.example/back")

    sub_id = data["subscription"]["id"]
    assert data["subscription"]["status"] == "incomplete"
    assert data["payment_action"]["confirmation_url"].startswith("https://yoomoney.ru/")
    [first] = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    assert first["amount"] == {"value": "499.00", "currency": "RUB"}
    fake.pay(first["id"])
    assert (
        await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    ).status_code == 200
    active = await eventually(bus, user, sub_id, "active")
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)

    clock.set(datetime.fromisoformat(active["current_period_end"]))
    outcome = await worker.renewals.run_once()

    assert outcome["charged"] == 1
    renewed = await eventually(bus, user, sub_id, "active")
    assert renewed["current_period_start"] == active["current_period_end"]
    charges = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    assert len(charges) == 2
    assert charges[1]["payment_method"]["id"] == first["payment_method"]["id"]
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)

    # the saved card stops working: the next renewal fails into dunning
    fake.declining_methods.add(first["payment_method"]["id"])
    clock.set(datetime.fromisoformat(renewed["current_period_end"]))
    await worker.renewals.run_once()
    assert (await status_of(bus, user, sub_id))["status"] == "past_due"
    await bus.event("subscription.past_due", lambda d: d["subscription_id"] == sub_id)
    clock.advance(days=1)
    await worker.renewals.run_once()
    # second failure, still dunning
    assert (await status_of(bus, user, sub_id))["status"] == "past_due"
    assert clock.now - datetime.fromisoformat(renewed["current_period_end"]) == timedelta(days=1)


async def test_a_first_yookassa_payment_that_fails_expires_the_subscription(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user, code = new_user(), await plan(bus, "RUB", "499.00")
    data = await subscribe(bus, user, code, "yookassa", return_url="https://shop.example/back")
    [payment] = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    fake.cancel(payment["id"], reason="card_expired")

    assert (
        await relay.yookassa(fake.notification("payment.canceled", payment["id"]))
    ).status_code == 200

    expired = await eventually(bus, user, data["subscription"]["id"], "incomplete_expired")
    assert expired["status"] == "incomplete_expired"
    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert failed["data"]["failure_code"] == "card_expired"


async def test_the_same_stripe_invoice_under_another_event_id_records_one_charge(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    """Stripe may tell of one paid invoice in several events (or an old signed event is
    replayed under a new id): the charge is recorded once and the event is not an error."""
    fake, _ = stripe_fake
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    data = await subscribe(bus, user, code, "stripe")
    ref = stripe_ref(fake, user)
    invoice_id = fake.subscriptions[ref]["latest_invoice"]
    fake.succeed(fake._invoice_payment_intent[invoice_id])  # the customer paid
    assert (await relay.stripe(fake.event("invoice.paid", fake.invoices[invoice_id]))).is_success
    await eventually(bus, user, data["subscription"]["id"], "active")

    stripe = worker.service.deps.gateways.get("stripe")
    again = stripe.parse_event(fake.event("invoice.paid", fake.invoices[invoice_id]))
    await worker.service.provider_event(again)  # applies without an error

    history = await bus.call("billing.wallet.transactions", {"user_id": user})
    charges = [t for t in history["data"]["items"] if t["kind"] == "subscription_charge"]
    assert [(c["status"], c["amount"]["amount"]) for c in charges] == [("completed", "10.00")]


async def test_a_stripe_subscription_passes_its_coupons_stripe_id_to_stripe(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    async with driver_connection(worker.engine) as db:  # as billing.coupon.upsert stores them
        for code, stripe_id in (("STRIPE5", "co_welcome5"), ("LOCAL5", None)):
            await db.execute(
                "INSERT INTO coupons (id, code, name, percent_off, duration, active, "
                "stripe_coupon_id) VALUES ($1, $2, $2, 5, 'once', true, $3) "
                "ON CONFLICT (code) DO NOTHING",
                uuid.uuid4(), code, stripe_id,
            )  # fmt: skip
    user, code = new_user(), await plan(bus, stripe_price_id="price_pro_monthly")
    refused = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa", "coupon": "LOCAL5"},
    )  # fmt: skip
    assert refused["error"]["code"] == "invalid_message", refused
    assert [s for s in fake.subscriptions.values() if s["metadata"].get("user_id") == user] == []

    await subscribe(bus, user, code, "stripe", payment_method_id="pm_card_visa", coupon="STRIPE5")
    discounts = fake.subscriptions[stripe_ref(fake, user)]["discounts"]
    assert [d["coupon"]["id"] for d in discounts] == ["co_welcome5"]


async def test_a_cancel_now_while_the_yookassa_renewal_is_pending_is_refused_no_money_is_lost(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    """The race: a renewal's payment is at YooKassa (`pending`, the bank slow to answer)
    when the customer cancels now; then YooKassa confirms the payment. Canceling then
    would leave money taken for a period nobody gets (the confirmation could no longer
    pay the ended subscription's period). So the cancel is refused `invalid_state` while
    the payment is in flight (a period-end cancel is still taken); the confirmed payment
    pays the period, and a cancel afterwards ends the subscription as usual."""
    fake, _ = yookassa_fake
    user, code = new_user(), await plan(bus, "RUB", "499.00")
    data = await subscribe(bus, user, code, "yookassa", return_url="https://shop.example/back")
    sub_id = data["subscription"]["id"]
    [first] = [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]
    fake.pay(first["id"])
    await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    active = await eventually(bus, user, sub_id, "active")

    fake.pending_methods.add(first["payment_method"]["id"])
    clock.set(datetime.fromisoformat(active["current_period_end"]))
    assert (await worker.renewals.run_once())["charged"] == 1
    [renewal] = [p for p in fake.payments.values()
                 if p["metadata"]["user_id"] == user and p["id"] != first["id"]]  # fmt: skip
    assert renewal["status"] == "pending"

    cancel = {"idempotency_key": key(), "user_id": user, "subscription_id": sub_id,
              "at_period_end": False, "reason": "changed my mind"}  # fmt: skip
    refused = await bus.call("billing.subscription.cancel", cancel)
    assert refused["ok"] is False, refused
    assert refused["error"]["code"] == "invalid_state", refused
    assert "in flight" in refused["error"]["message"]
    assert (await status_of(bus, user, sub_id))["status"] == "active"
    at_end = await bus.call("billing.subscription.cancel",
                            cancel | {"idempotency_key": key(), "at_period_end": True})  # fmt: skip
    assert at_end["ok"], at_end
    assert at_end["data"]["cancel_at_period_end"] is True

    fake.pay(renewal["id"])
    assert (
        await relay.yookassa(fake.notification("payment.succeeded", renewal["id"]))
    ).status_code == 200
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)
    renewed = await status_of(bus, user, sub_id)
    assert renewed["status"] == "active"
    assert renewed["current_period_start"] == active["current_period_end"]  # paid, served

    now = await bus.call("billing.subscription.cancel", cancel | {"idempotency_key": key()})
    assert now["ok"], now
    assert now["data"]["status"] == "canceled"
    async with driver_connection(worker.engine) as db:
        charges = await db.fetch(
            "SELECT status, amount_minor FROM transactions WHERE subscription_id = $1 "
            "ORDER BY created_at", uuid.UUID(sub_id),
        )  # fmt: skip
        paid = await db.fetchval(
            "SELECT count(*) FROM invoices WHERE subscription_id = $1 AND status = 'paid'",
            uuid.UUID(sub_id),
        )
        assert not await audit(db)
    assert [(c["status"], c["amount_minor"]) for c in charges] == [("completed", 49900)] * 2
    assert paid == 2  # each paid period, its one paid invoice
