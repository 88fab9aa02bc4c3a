"""A YooKassa card setup at a shop that requires 54-FZ receipts: YooKassa requires the
receipt when the payment is created, even one that will be canceled before capture
(which registers none), so the setup sends it; without a contact it is
`invalid_message` with nothing sent."""

from __future__ import annotations

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.methods_kit import SETUP, SETUP_RETURN, key, listing, new_user
from support.relay import Relay
from support.rpc import Bus
from support.settings import provider_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(
    database_url: str, rabbitmq_url: str, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Settings:  # fmt: skip
    yookassa_fake[0].requires_receipts = True
    return provider_settings(database_url, rabbitmq_url, stripe_fake[1], yookassa_fake[1],
                             yookassa_receipts=True)  # fmt: skip


async def test_a_setup_at_a_shop_requiring_receipts_sends_one_and_saves_the_card(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user, mute = new_user(), new_user()
    command = {"idempotency_key": key(), "provider": "yookassa", "return_url": SETUP_RETURN}
    posts = len(fake.requests_to("POST", "/v3/payments"))

    refused = await bus.call(SETUP, {**command, "user_id": mute})

    assert refused["error"]["code"] == "invalid_message", refused
    assert len(fake.requests_to("POST", "/v3/payments")) == posts
    async with driver_connection(worker.engine) as db:
        await db.execute("INSERT INTO billing_users (id, user_id, email) VALUES "
                         "(gen_random_uuid(), $1, 'card@example.com')", user)  # fmt: skip
    reply = await bus.call(SETUP, {**command, "user_id": user})
    assert reply["ok"], reply
    ours = reply["data"]["setup_id"]
    [payment] = [p for p in fake.payments.values() if p["metadata"].get("setup_id") == ours]
    receipt = fake.receipts[payment["id"]]
    assert receipt["customer"] == {"email": "card@example.com"}
    assert [i["amount"] for i in receipt["items"]] == [{"value": "1.00", "currency": "RUB"}]

    fake.pay(payment["id"])
    notification = fake.notification("payment.waiting_for_capture", payment["id"])
    assert (await relay.yookassa(notification)).status_code == 200
    method = str(payment["payment_method"]["id"])
    await bus.event("payment_method.saved", lambda d: d["user_id"] == user)
    assert [m["payment_method_id"] for m in await listing(bus, user)] == [method]
    assert fake.payments[payment["id"]]["status"] == "canceled"
