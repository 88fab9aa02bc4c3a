"""A YooKassa card saved without charging it: `billing.payment-method.setup` makes a
held payment of the setup amount (1.00 RUB, `capture: false`, `save_payment_method`);
YooKassa's `payment.waiting_for_capture`, re-read at YooKassa, saves the card (as
YooKassa describes it) and the payment is canceled there. No wallet transaction is
written; a forged or unconfirmed notification saves nothing, and nobody saves a card
for another user."""

from __future__ import annotations

import json

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from fakes.yookassa_api import FakeYooKassa
from support.methods_kit import (
    SETUP,
    SETUP_RETURN,
    key,
    listing,
    new_user,
    setup_payment,
    yookassa_setup_saved,
)
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


async def transactions_of(worker: Worker, user: str) -> int:
    async with driver_connection(worker.engine) as db:
        count = await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user)
    return int(count)


async def test_a_yookassa_setup_saves_the_card_yookassa_confirms_and_takes_no_money(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()

    data, payment = await setup_payment(bus, fake, user)

    assert data["status"] == "pending"
    assert data["payment_method"] is None
    url = payment["confirmation"]["confirmation_url"]
    assert data["payment_action"] == {"type": "redirect", "confirmation_url": url,
                                      "client_secret": None}  # fmt: skip
    posts = fake.requests_to("POST", "/v3/payments")
    ours = data["setup_id"]
    [sent] = [r.json for r in posts if (r.json or {}).get("metadata", {}).get("setup_id") == ours]
    assert sent["amount"] == {"value": "1.00", "currency": "RUB"}
    assert sent["capture"] is False
    assert sent["save_payment_method"] is True
    assert sent["confirmation"] == {"type": "redirect", "return_url": SETUP_RETURN}
    assert sent["metadata"] == {"setup_id": data["setup_id"], "user_id": user}

    # claims before the customer confirmed: YooKassa's payment is still pending
    lie = {"type": "bank_card", "id": "pm-forged", "saved": True}
    forged = dict(fake.payments[payment["id"]], status="waiting_for_capture", payment_method=lie)
    for event in ("payment.waiting_for_capture", "payment.succeeded"):
        body = {"type": "notification", "event": event, "object": forged}
        assert (await relay.yookassa(json.dumps(body).encode())).status_code == 200
    await yookassa_setup_saved(bus, relay, fake, new_user())  # handled after the claims
    assert await listing(bus, user) == []
    assert fake.payments[payment["id"]]["status"] == "pending"  # nothing canceled either
    method = await yookassa_setup_saved_after(bus, relay, fake, payment["id"])

    [item] = await listing(bus, user, "yookassa")
    assert item | {"created_at": None} == {
        "payment_method_id": method, "provider": "yookassa", "brand": "MasterCard",
        "last4": "4444", "exp_month": 12, "exp_year": 2030, "is_default": True,
        "created_at": None,
    }  # fmt: skip
    held = fake.payments[payment["id"]]
    assert held["status"] == "canceled"
    assert held["cancellation_details"]["party"] == "merchant"
    # YooKassa's payment.canceled of it (and a redelivery) saves nothing new
    canceled = fake.notification("payment.canceled", payment["id"])
    assert (await relay.yookassa(canceled)).status_code == 200
    assert (await relay.yookassa(canceled)).status_code == 200
    await yookassa_setup_saved(bus, relay, fake, user)  # a later setup: the others were handled
    assert len(bus.events_of("payment_method.saved", lambda d: d["user_id"] == user)) == 2
    # concurrent deliveries may both ask: with one key, which YooKassa answers once
    cancels = fake.requests_to("POST", f"/v3/payments/{payment['id']}/cancel")
    assert {r.headers["idempotence-key"] for r in cancels} == {f"setup-cancel-{payment['id']}"}
    assert await transactions_of(worker, user) == 0  # no money moved, none recorded


async def yookassa_setup_saved_after(
    bus: Bus, relay: Relay, fake: FakeYooKassa, payment_id: str
) -> str:
    fake.pay(payment_id)
    notification = fake.notification("payment.waiting_for_capture", payment_id)
    assert (await relay.yookassa(notification)).status_code == 200
    assert (await relay.yookassa(notification)).status_code == 200  # redelivered
    method = str(fake.payments[payment_id]["payment_method"]["id"])
    await bus.event("payment_method.saved",
                    lambda d: d["payment_method"]["payment_method_id"] == method)  # fmt: skip
    return method


async def test_a_setup_the_customer_abandoned_saves_nothing(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    _, payment = await setup_payment(bus, fake, user)
    fake.cancel(payment["id"], reason="expired_on_confirmation", party="yoo_money")

    assert (await relay.yookassa(fake.notification("payment.canceled", payment["id"]))
            ).status_code == 200  # fmt: skip
    await yookassa_setup_saved(bus, relay, fake, user)  # a later one: the first was handled

    assert len(await listing(bus, user)) == 1  # only the confirmed one


async def test_another_users_setup_cannot_be_hijacked(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    _, own = await setup_payment(bus, fake, owner)
    await setup_payment(bus, fake, attacker)
    fake.pay(own["id"])
    # the attacker's copy of the owner's notification, naming the attacker
    body = fake.notification("payment.waiting_for_capture", own["id"])
    claim = body.replace(owner.encode(), attacker.encode())

    assert (await relay.yookassa(claim)).status_code == 200

    method = str(own["payment_method"]["id"])
    saved = await bus.event(
        "payment_method.saved", lambda d: d["payment_method"]["payment_method_id"] == method
    )
    assert saved["data"]["user_id"] == owner  # YooKassa's payment names the owner
    assert await listing(bus, attacker) == []
    assert [m["payment_method_id"] for m in await listing(bus, owner)] == [method]
    assert await transactions_of(worker, attacker) == 0


async def test_a_yookassa_setup_needs_a_return_url(
    bus: Bus, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    posts = len(fake.requests_to("POST", "/v3/payments"))
    reply = await bus.call(SETUP, {"idempotency_key": key(), "user_id": new_user(),
                                   "provider": "yookassa"})  # fmt: skip
    assert reply["error"]["code"] == "invalid_message", reply
    assert len(fake.requests_to("POST", "/v3/payments")) == posts
