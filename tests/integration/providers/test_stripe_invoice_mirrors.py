"""A mirror invoice for every paid Stripe invoice of a Stripe-run subscription, through
the real SDK against the Stripe HTTP fake and the relay, on PostgreSQL and RabbitMQ."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from fakes.stripe_api import FakeStripe
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Its own database: the audit below reads every row."""
    return fresh_database_url


def key() -> str:
    return uuid.uuid4().hex


async def mirrors(bus: Bus, user: str) -> list[dict[str, Any]]:
    reply = await bus.call("billing.invoice.get", {"user_id": user, "limit": 10})
    return sorted(reply["data"]["items"], key=lambda i: i["number"])


async def test_each_paid_stripe_invoice_is_mirrored_once_under_duplicated_webhooks(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = f"mirror-{key()[:8]}"
    code = f"plan-{key()[:8]}"
    assert (await bus.call("billing.plan.upsert", {
        "idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "10.00", "currency": "USD"}, "stripe_price_id": "price_pro_monthly",
    }))["ok"]  # fmt: skip
    created = await bus.call("billing.subscription.create", {
        "idempotency_key": key(), "user_id": user, "plan_code": code,
        "payment_source": "stripe", "payment_method_id": "pm_card_visa",
    })  # fmt: skip
    assert created["ok"], created
    sub_id = created["data"]["subscription"]["id"]
    [ref] = [s["id"] for s in fake.subscriptions.values() if s["metadata"].get("user_id") == user]
    first = fake.invoices[fake.subscriptions[ref]["latest_invoice"]]
    assert first["status"] == "paid"
    # a month later Stripe renews it (after a plan change: a proration pair), with tax
    item = fake.subscriptions[ref]["items"]["data"][0]
    item["current_period_start"] = item["current_period_end"]
    item["current_period_end"] += 30 * 86400
    renewal = copy.deepcopy(first) | {
        "id": f"in_{key()[:12]}", "billing_reason": "subscription_cycle",
        "amount_due": 1_190, "amount_paid": 1_190, "total_taxes": [{"amount": 190}],
    }  # fmt: skip
    renewal["lines"] = fake.invoice_lines(renewal["id"], [
        ("Unused time on Basic", 1, -500, True), ("Remaining time on Pro", 1, 500, True),
        ("1 x Pro", 1, 1_000, False),
    ], "usd")  # fmt: skip
    fake.invoices[renewal["id"]] = renewal

    for invoice in (first, renewal):
        webhook = fake.event("invoice.paid", invoice)
        assert (await relay.stripe(webhook)).status_code == 200
        assert (await relay.stripe(webhook)).status_code == 200  # the same event again
        told_again = fake.event("invoice.paid", invoice)  # another event of the same invoice
        assert (await relay.stripe(told_again)).status_code == 200
    await bus.event("invoice.paid", lambda d: d["user_id"] == user, count=2)
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)

    found = await mirrors(bus, user)
    assert [(i["status"], i["stripe_invoice_id"], i["subscription_id"]) for i in found] == [
        ("paid", first["id"], sub_id), ("paid", renewal["id"], sub_id),
    ]  # fmt: skip
    assert [(i["subtotal"]["amount"], i["tax"]["amount"], i["total"]["amount"]) for i in found] == [
        ("10.00", "0.00", "10.00"), ("10.00", "1.90", "11.90"),
    ]  # fmt: skip
    assert [(x["amount"]["amount"], x.get("credit"), x.get("proration"))
            for x in found[1]["lines"]] == [
        ("5.00", True, True), ("5.00", None, True), ("10.00", None, None),
    ]  # fmt: skip
    assert len(bus.events_of("invoice.created", lambda d: d["user_id"] == user)) == 2
    async with driver_connection(worker.engine) as db:
        findings = await audit(db)
    assert findings == []
