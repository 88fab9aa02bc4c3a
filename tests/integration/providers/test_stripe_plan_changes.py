"""`billing.subscription.change-plan` of Stripe-run subscriptions, through the Stripe fake
(the real SDK over HTTP), the worker and RabbitMQ on the real PostgreSQL: a prorated
upgrade and downgrade mid-period with Stripe's own per-second figures, a change at the
period end, and the refusals that leave Stripe untouched."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from fakes.stripe_api import PERIOD_SECONDS, FakeStripe
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

T0 = 1_900_000_000  # the fake's fixed clock when the subscription starts
DAY = 86400


def key() -> str:
    return uuid.uuid4().hex


async def plans(bus: Bus, fake: FakeStripe) -> tuple[str, str, str]:
    """Pro 10.00 and Max 30.00 a month at Stripe, and Bare without a Stripe price."""
    tag = uuid.uuid4().hex[:8]
    codes = []
    made = (("Pro", "10.00", f"price_pro_{tag}"), ("Max", "30.00", f"price_max_{tag}"),
            ("Bare", "30.00", None))  # fmt: skip
    for name, amount, price in made:
        if price:
            fake.add_price(price, int(amount.replace(".", "")), nickname=name)
        code = f"{name.lower()}-{tag}"
        reply = await bus.call(
            "billing.plan.upsert",
            {"idempotency_key": key(), "code": code, "name": name, "interval": "month",
             "price": {"amount": amount, "currency": "USD"}, "stripe_price_id": price},
        )  # fmt: skip
        assert reply["ok"], reply
        codes.append(code)
    return codes[0], codes[1], codes[2]


async def subscribed(bus: Bus, fake: FakeStripe, user: str, code: str) -> dict[str, Any]:
    fake.clock = lambda: float(T0)
    reply = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa"},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]["subscription"]  # type: ignore[no-any-return]


def change(user: str, sub: dict[str, Any], code: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "subscription_id": sub["id"],
            "plan_code": code, **extra}  # fmt: skip


def at_stripe(fake: FakeStripe, user: str) -> dict[str, Any]:
    [sub] = [s for s in fake.subscriptions.values() if s["metadata"].get("user_id") == user]
    return sub


def item_of(fake: FakeStripe, user: str) -> tuple[str, int]:
    item = at_stripe(fake, user)["items"]["data"][0]
    return item["price"]["id"], item["quantity"]


async def test_prorated_upgrade_and_downgrade_at_stripe_with_its_invoice_figures(
    bus: Bus, worker: Worker, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    pro, maxi, _bare = await plans(bus, fake)
    user = f"splan-{uuid.uuid4().hex[:8]}"
    sub = await subscribed(bus, fake, user, pro)
    assert at_stripe(fake, user)["items"]["data"][0]["current_period_end"] == T0 + PERIOD_SECONDS

    # 12 days 7 hours in: 1,530,000 of the period's 2,592,000 seconds are left
    fake.clock = lambda: float(T0 + 12 * DAY + 7 * 3600)
    upgrade = await bus.call(
        "billing.subscription.change-plan", change(user, sub, maxi, quantity=2)
    )

    assert upgrade["ok"], upgrade
    assert (upgrade["data"]["plan_code"], upgrade["data"]["quantity"]) == (maxi, 2)
    assert item_of(fake, user) == (f"price_max_{maxi.split('-')[1]}", 2)
    invoice = fake.invoices[at_stripe(fake, user)["latest_invoice"]]
    lines = [(li["amount"], li["proration"], li["description"], li["period"]["end"])
             for li in invoice["lines"]["data"]]  # fmt: skip
    assert lines == [  # 1000 x 1530000/2592000 = 590.28; 6000 x the same = 3541.67
        (-590, True, "Unused time on Pro after 30 Mar 2030", T0 + PERIOD_SECONDS),
        (3542, True, "Remaining time on 2 \u00d7 Max after 30 Mar 2030", T0 + PERIOD_SECONDS),
    ]
    assert (invoice["billing_reason"], invoice["status"], invoice["amount_paid"]) == (
        "subscription_update", "paid", 2952,
    )  # fmt: skip
    [asked] = fake.calls("POST", f"/v1/subscriptions/{at_stripe(fake, user)['id']}")
    assert (asked.params["proration_behavior"], asked.params["payment_behavior"]) == (
        "always_invoice", "error_if_incomplete",
    )  # fmt: skip
    assert asked.headers["idempotency-key"].startswith("sub-plan-")
    event = await bus.event(
        "subscription.updated", lambda d: d["subscription_id"] == sub["id"] and d["quantity"] == 2
    )
    assert (event["data"]["from_plan_code"], event["data"]["when"]) == (pro, "now")
    assert event["data"]["proration_charged"] == {"amount": "29.52", "currency": "USD"}
    # Stripe's own invoice.paid of the proration: its charge in our ledger, once, as any
    # invoice Stripe charged (no period renewed: the period is the same)
    paid = fake.event("invoice.paid", invoice)
    assert (await relay.stripe(paid)).status_code == 200
    charge = await bus.event(
        "payment.success", lambda d: d["user_id"] == user and d["provider_ref"] == invoice["id"]
    )
    assert charge["data"]["amount"] == {"amount": "29.52", "currency": "USD"}
    assert bus.events_of("subscription.renewed", lambda d: d["subscription_id"] == sub["id"]) == []

    fake.clock = lambda: float(T0 + 20 * DAY)  # a third of the period left
    downgrade = await bus.call(
        "billing.subscription.change-plan", change(user, sub, pro, quantity=1)
    )

    assert downgrade["ok"], downgrade
    assert (downgrade["data"]["plan_code"], downgrade["data"]["quantity"]) == (pro, 1)
    invoice = fake.invoices[at_stripe(fake, user)["latest_invoice"]]
    assert [li["amount"] for li in invoice["lines"]["data"]] == [-2000, 333]
    assert (invoice["total"], invoice["amount_paid"]) == (-1667, 0)
    assert fake.customers[at_stripe(fake, user)["customer"]]["balance"] == -1667  # a credit
    event = await bus.event(
        "subscription.updated", lambda d: d["subscription_id"] == sub["id"] and d["quantity"] == 1
    )
    assert event["data"]["proration_credited"] == {"amount": "16.67", "currency": "USD"}
    assert event["data"].get("proration_charged") is None

    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT kind, from_quantity, to_quantity, proration_minor "
            "FROM subscription_plan_changes WHERE subscription_id = $1 ORDER BY id",
            uuid.UUID(sub["id"]),
        )
    assert [tuple(r) for r in rows] == [
        ("change_plan", 1, 2, 2952),
        ("change_plan", 2, 1, -1667),
    ]


async def test_a_period_end_change_at_stripe_invoices_nothing_now_and_refusals_ask_nothing(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    pro, maxi, bare = await plans(bus, fake)
    user = f"splan-{uuid.uuid4().hex[:8]}"
    sub = await subscribed(bus, fake, user, pro)
    first_invoice = at_stripe(fake, user)["latest_invoice"]
    fake.clock = lambda: float(T0 + 10 * DAY)
    updates = len(fake.calls("POST", f"/v1/subscriptions/{at_stripe(fake, user)['id']}"))

    no_price = await bus.call("billing.subscription.change-plan", change(user, sub, bare))
    stranger = await bus.call("billing.subscription.change-plan", change("someone", sub, maxi))

    assert no_price["error"]["code"] == "invalid_message", no_price
    assert stranger["error"]["code"] == "not_found", stranger
    assert len(fake.calls("POST", f"/v1/subscriptions/{at_stripe(fake, user)['id']}")) == updates

    later = await bus.call(
        "billing.subscription.change-plan", change(user, sub, maxi, when="period_end")
    )

    assert later["ok"], later
    assert later["data"]["plan_code"] == maxi  # Stripe bills Max from its next invoice
    assert item_of(fake, user) == (f"price_max_{maxi.split('-')[1]}", 1)
    assert at_stripe(fake, user)["latest_invoice"] == first_invoice  # nothing invoiced now
    [asked] = fake.calls("POST", f"/v1/subscriptions/{at_stripe(fake, user)['id']}")[updates:]
    assert asked.params["proration_behavior"] == "none"
    event = await bus.event("subscription.updated", lambda d: d["subscription_id"] == sub["id"])
    assert (event["data"]["when"], event["data"].get("proration_charged")) == ("period_end", None)
