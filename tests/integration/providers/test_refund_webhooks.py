"""Refund webhooks meeting refunds by command, end to end: Stripe's running total and
YooKassa's refund notifications after a command refund, dashboard refunds recorded once,
pending refunds completed (or canceled) by notification or by the reconciler; the audit
is clean at the end of each test (each test has a database of its own)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from billing_worker.app import Worker
from billing_worker.jobs.reconcile_refunds import reconcile_refunds
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.attacker import stripe_refund, yookassa_refund
from support.refund_shop import Shop, assert_audit_clean, count, new_user, wait_for
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    yield connection
    await connection.close()


@pytest.fixture
def shop(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Shop:  # fmt: skip
    return Shop(bus, relay, stripe_fake, yookassa_fake)


async def test_a_stripe_refund_webhook_after_a_command_refund_and_a_dashboard_refund(
    shop: Shop, db: asyncpg.Connection
) -> None:
    """Stripe's `charge.refunded` tells the running total: the command's refund is in it
    and not recorded again; a dashboard refund after it is recorded once."""
    user = new_user()
    payment = await shop.deposit("stripe", user, "25.00")
    assert (await shop.refund(user, payment, "10.00"))["ok"]
    [pi] = [p for p in shop.stripe.payment_intents.values()
            if p["metadata"]["transaction_id"] == payment]  # fmt: skip
    charge = shop.stripe.charges[pi["latest_charge"]]
    assert (
        await shop.relay.stripe(shop.stripe.event("charge.refunded", charge))
    ).status_code == 200
    await stripe_refund(shop.stripe_base, pi["id"], 500)  # in the dashboard
    charge = shop.stripe.charges[pi["latest_charge"]]
    for _ in range(2):  # the same total told twice
        told = shop.stripe.event("charge.refunded", charge)
        assert (await shop.relay.stripe(told)).status_code == 200
    await wait_for(lambda: count(shop, "payment.refunded", payment, 2))
    rows = await db.fetch(
        "SELECT amount_minor, provider_ref FROM transactions WHERE refund_of = $1 "
        "ORDER BY amount_minor",
        uuid.UUID(payment),
    )
    assert [r["amount_minor"] for r in rows] == [500, 1000]
    assert await shop.balance(user, "USD") == "10.00"
    await assert_audit_clean(db)


async def test_a_yookassa_refund_notification_of_a_command_refund_and_a_dashboard_refund(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user = new_user()
    payment = await shop.deposit("yookassa", user, "100.00")
    reply = await shop.refund(user, payment, "40.00", currency="RUB")
    assert reply["ok"], reply
    [ours] = list(shop.yookassa.refunds)
    assert (await shop.relay.yookassa(shop.yookassa.refund_notification(ours))).status_code == 200
    [payment_id] = [pid for pid, p in shop.yookassa.payments.items()
                    if p["metadata"]["transaction_id"] == payment]  # fmt: skip
    dashboard = await yookassa_refund(shop.yookassa_base, payment_id, "25.00")
    for _ in range(2):
        told = shop.yookassa.refund_notification(dashboard["id"])
        assert (await shop.relay.yookassa(told)).status_code == 200
    await wait_for(lambda: count(shop, "payment.refunded", payment, 2))
    refs = await db.fetch(
        "SELECT amount_minor, provider_ref FROM transactions WHERE refund_of = $1 "
        "ORDER BY amount_minor",
        uuid.UUID(payment),
    )
    assert [(r["amount_minor"], r["provider_ref"]) for r in refs] == [
        (2500, dashboard["id"]), (4000, ours),
    ]  # fmt: skip
    assert await shop.balance(user, "RUB") == "35.00"
    await assert_audit_clean(db)


@pytest.mark.parametrize("how", ["notification", "reconciler", "canceled"])
async def test_a_pending_yookassa_refund_completes_later_once(
    shop: Shop, db: asyncpg.Connection, worker: Worker, how: str
) -> None:
    user = new_user()
    payment = await shop.deposit("yookassa", user, "100.00")
    shop.yookassa.refund_status = "pending"
    reply = await shop.refund(user, payment, "30.00", currency="RUB")
    assert reply["data"]["refund"]["status"] == "processing", reply
    assert await shop.balance(user, "RUB") == "70.00"  # held while the refund is pending
    [ref] = list(shop.yookassa.refunds)
    shop.yookassa.settle_refund(ref, "canceled" if how == "canceled" else "succeeded")
    if how == "notification":
        assert (
            await shop.relay.yookassa(shop.yookassa.refund_notification(ref))
        ).status_code == 200
    else:
        r = worker.reconciler
        assert await reconcile_refunds(r.engine, r.service, r.gateways, 0, 10) == 1
    expected = ("failed", "100.00") if how == "canceled" else ("completed", "70.00")

    async def settled() -> bool:
        status = await db.fetchval("SELECT status FROM transactions WHERE refund_of = $1",
                                   uuid.UUID(payment))  # fmt: skip
        return (status, await shop.balance(user, "RUB")) == expected

    await wait_for(settled)
    if how != "canceled":
        await wait_for(lambda: count(shop, "payment.refunded", payment, 1))
    await assert_audit_clean(db)


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_a_pending_stripe_refund_is_settled_by_the_reconciler_once(
    shop: Shop, db: asyncpg.Connection, worker: Worker, outcome: str
) -> None:
    """Stripe counts a pending refund in the charge's total: its `charge.refunded` records
    nothing; the reconciler's read of the refund completes (or fails) it."""
    user = new_user()
    payment = await shop.deposit("stripe", user, "20.00")
    shop.stripe.refund_status = "pending"
    reply = await shop.refund(user, payment, "8.00")
    assert reply["data"]["refund"]["status"] == "processing", reply
    [pi] = [p for p in shop.stripe.payment_intents.values()
            if p["metadata"]["transaction_id"] == payment]  # fmt: skip
    told = shop.stripe.event("charge.refunded", shop.stripe.charges[pi["latest_charge"]])
    assert (await shop.relay.stripe(told)).status_code == 200

    async def handled() -> bool:  # confirmed at Stripe and applied (as stale: nothing new)
        return bool(await db.fetchval(
            "SELECT count(*) FROM idempotency_records "
            "WHERE scope = 'provider:stripe' AND key = $1",
            json.loads(told)["id"],
        ))  # fmt: skip

    await wait_for(handled)
    [ref] = list(shop.stripe.refunds)
    shop.stripe.settle_refund(ref, outcome)
    r = worker.reconciler
    assert await reconcile_refunds(r.engine, r.service, r.gateways, 0, 10) == 1
    assert await reconcile_refunds(r.engine, r.service, r.gateways, 0, 10) == 0
    expected = ("completed", "12.00") if outcome == "succeeded" else ("failed", "20.00")
    rows = await db.fetch("SELECT status FROM transactions WHERE refund_of = $1",
                          uuid.UUID(payment))  # fmt: skip
    assert ([row["status"] for row in rows], await shop.balance(user, "USD")) == (
        [expected[0]], expected[1],
    )  # fmt: skip
    await assert_audit_clean(db)


async def test_a_stripe_subscription_charge_is_refunded_to_the_balance_not_by_billing_at_stripe(
    shop: Shop, db: asyncpg.Connection
) -> None:
    """A charge of a subscription Stripe runs is its invoice: billing credits the balance,
    and refunds at Stripe are the dashboard's (their webhook records them)."""
    user, code = new_user(), f"plan-{uuid.uuid4().hex[:8]}"
    await shop.bus.call("billing.plan.upsert", {
        "idempotency_key": uuid.uuid4().hex, "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "10.00", "currency": "USD"},
        "stripe_price_id": "price_pro"})  # fmt: skip
    created = await shop.bus.call("billing.subscription.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "plan_code": code,
        "payment_source": "stripe"})  # fmt: skip
    assert created["ok"], created
    [sub] = [s for s in shop.stripe.subscriptions.values() if s["metadata"].get("user_id") == user]
    invoice = shop.stripe.invoices[sub["latest_invoice"]]
    shop.stripe.succeed(shop.stripe._invoice_payment_intent[invoice["id"]])
    paid = shop.stripe.event("invoice.paid", shop.stripe.invoices[invoice["id"]])
    assert (await shop.relay.stripe(paid)).status_code == 200
    await shop.bus.event("payment.success", lambda d: d["user_id"] == user)
    charge = str(await db.fetchval(
        "SELECT id FROM transactions WHERE kind = 'subscription_charge' AND user_id = $1", user
    ))  # fmt: skip

    at_stripe = await shop.refund(user, charge)
    assert at_stripe["error"]["code"] == "provider_error", at_stripe
    assert shop.refund_calls("stripe") == 0
    to_balance = await shop.refund(user, charge, "4.00", destination="balance")
    assert to_balance["data"]["refund"]["provider"] == "balance", to_balance
    assert await shop.balance(user, "USD") == "4.00"
    await assert_audit_clean(db)


async def test_a_refund_whose_deliveries_all_failed_is_finished_by_the_reconciler(
    shop: Shop, db: asyncpg.Connection, worker: Worker
) -> None:
    """Stripe down for every delivery: the refund stays asked (its amount held), the
    reconciler asks again with the same key, and the command's retry gets its reply."""
    user = new_user()
    payment = await shop.deposit("stripe", user, "20.00")
    command = {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "transaction_id": payment,
        "destination": "original", "amount": {"amount": "6.00", "currency": "USD"},
    }  # fmt: skip
    shop.stripe.fail_next(500, n=worker.settings.max_deliveries)
    gave_up = await shop.bus.call("billing.payment.refund", command, timeout=30)
    assert gave_up["error"]["code"] == "internal_error", gave_up
    assert await shop.balance(user, "USD") == "14.00"  # held for the refund asked
    worker.reconciler.after_seconds = 0
    assert await worker.reconciler.run_once() == 1
    again = await shop.bus.call("billing.payment.refund", command)
    assert again["data"]["refund"]["status"] == "completed", again
    assert (len(shop.stripe.refunds), shop.provider_refunded("stripe", payment)) == (1, 600)
    assert await worker.reconciler.run_once() == 0
    await wait_for(lambda: count(shop, "payment.refunded", payment, 1))
    await assert_audit_clean(db)
