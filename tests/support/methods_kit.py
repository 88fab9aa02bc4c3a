"""What the saved-payment-method integration tests share: the queues, listing, the
commands, the `not_found` an owner check answers, and a card saved by a setup."""

from __future__ import annotations

import uuid
from typing import Any

from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.relay import Relay
from support.rpc import Bus

SETUP, LIST = "billing.payment-method.setup", "billing.payment-method.list"
DETACH, DEFAULT = "billing.payment-method.detach", "billing.payment-method.set-default"
UPDATE = "billing.subscription.update-payment-method"
DEPOSIT = "billing.wallet.deposit"
SETUP_RETURN = "https://shop.example/cards"


def key() -> str:
    return uuid.uuid4().hex


def new_user(role: str = "u") -> str:
    return f"pmx-{role}-{uuid.uuid4().hex[:8]}"


async def listing(bus: Bus, user: str, provider: str | None = None) -> list[dict[str, Any]]:
    query = {"user_id": user} | ({"provider": provider} if provider else {})
    reply = await bus.call(LIST, query)
    assert reply["ok"], reply
    return reply["data"]["items"]  # type: ignore[no-any-return]


async def change(bus: Bus, queue: str, user: str, provider: str, method: str) -> dict[str, Any]:
    return await bus.call(queue, {"idempotency_key": key(), "user_id": user,
                                  "provider": provider, "payment_method_id": method})  # fmt: skip


async def deposit(
    bus: Bus, user: str, provider: str, amount: str, currency: str, **extra: str
) -> dict[str, Any]:
    money = {"amount": amount, "currency": currency}
    return await bus.call(DEPOSIT, {"idempotency_key": key(), "user_id": user,
                                    "provider": provider, "amount": money, **extra})  # fmt: skip


def not_found(reply: dict[str, Any], method: str, provider: str) -> bool:
    return reply == {"ok": False, "error": {
        "code": "not_found", "message": f"no saved {provider} payment method {method}",
        "details": {"payment_method_id": method}}}  # fmt: skip


async def setup_payment(bus: Bus, fake: FakeYooKassa, user: str) -> tuple[dict[str, Any], Any]:
    """The setup's reply and the payment YooKassa made for it."""
    reply = await bus.call(SETUP, {"idempotency_key": key(), "user_id": user,
                                   "provider": "yookassa", "return_url": SETUP_RETURN})  # fmt: skip
    assert reply["ok"], reply
    setup_id = reply["data"]["setup_id"]
    [payment] = [p for p in fake.payments.values()
                 if (p.get("metadata") or {}).get("setup_id") == setup_id]  # fmt: skip
    return reply["data"], payment


async def yookassa_setup_saved(bus: Bus, relay: Relay, fake: FakeYooKassa, user: str) -> str:
    """A card the user saved through a setup: confirmed, notified, saved."""
    _, payment = await setup_payment(bus, fake, user)
    fake.pay(payment["id"])
    notification = fake.notification("payment.waiting_for_capture", payment["id"])
    assert (await relay.yookassa(notification)).status_code == 200
    method = str(payment["payment_method"]["id"])
    await bus.event("payment_method.saved",
                    lambda d: d["payment_method"]["payment_method_id"] == method)  # fmt: skip
    return method


async def stripe_setup(bus: Bus, fake: FakeStripe, user: str) -> dict[str, Any]:
    """A setup for the user: the SetupIntent Stripe made for the user's customer."""
    reply = await bus.call(SETUP, {"idempotency_key": key(), "user_id": user,
                                   "provider": "stripe"})  # fmt: skip
    assert reply["ok"], reply
    assert reply["data"]["status"] == "pending"
    secret = reply["data"]["payment_action"]["client_secret"]
    [seti] = [s for s in fake.setup_intents.values() if s["client_secret"] == secret]
    return seti


async def stripe_saved(bus: Bus, relay: Relay, fake: FakeStripe, user: str,
                       card: str = "pm_card_visa") -> str:  # fmt: skip
    seti = await stripe_setup(bus, fake, user)
    method = fake.confirm_setup(seti["id"], card)
    response = await relay.stripe(
        fake.event("setup_intent.succeeded", fake.setup_intents[seti["id"]])
    )
    assert response.status_code == 200
    await bus.event("payment_method.saved",
                    lambda d: d["payment_method"]["payment_method_id"] == method)  # fmt: skip
    return method
