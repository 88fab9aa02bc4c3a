"""YooKassa deposits through the real SDK against the HTTP fake, completed via the relay."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from fakes.yookassa_api import FakeYooKassa
from support.relay import YOOKASSA_IP, Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


def new_user() -> str:
    return f"yk-user-{uuid.uuid4().hex[:8]}"


def yookassa_deposit(user: str, amount: str = "100.00", **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "amount": {"amount": amount, "currency": "RUB"},
        "provider": "yookassa",
        "return_url": "https://shop.example/return",
        **extra,
    }


async def balance(bus: Bus, user: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "RUB"})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def redirect_deposit(bus: Bus, fake: FakeYooKassa, user: str, amount: str = "100.00") -> str:
    reply = await bus.call(DEPOSIT, yookassa_deposit(user, amount))
    assert reply["ok"], reply
    transaction_id = reply["data"]["transaction"]["id"]
    [payment_id] = [
        pid for pid, p in fake.payments.items() if p["metadata"]["transaction_id"] == transaction_id
    ]
    return payment_id


async def test_a_yookassa_deposit_goes_from_redirect_to_notification_to_completion(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()

    reply = await bus.call(DEPOSIT, yookassa_deposit(user, "1500.50"))

    assert reply["data"]["transaction"]["status"] == "processing"
    action = reply["data"]["payment_action"]
    assert action["type"] == "redirect"
    assert action["confirmation_url"].startswith("https://yoomoney.ru/checkout/")
    [request] = [
        r for r in fake.requests_to("POST", "/v3/payments") if r.json["metadata"]["user_id"] == user
    ]
    assert request.json["amount"] == {"value": "1500.50", "currency": "RUB"}  # exact string
    assert request.json["save_payment_method"] is True
    assert request.idempotence_key == f"pay-{reply['data']['transaction']['id']}"
    [payment_id] = [pid for pid, p in fake.payments.items() if p["metadata"]["user_id"] == user]
    fake.pay(payment_id)  # the customer went through the redirect

    response = await relay.yookassa(fake.notification("payment.succeeded", payment_id))

    assert response.status_code == 200
    done = await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert done["data"]["amount"] == {"amount": "1500.50", "currency": "RUB"}
    assert await balance(bus, user) == "1500.50"


async def test_a_notification_from_a_disallowed_address_gets_403_and_nothing_is_published(
    relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    body = json.dumps({"type": "notification", "event": "payment.succeeded",
                       "object": {"id": "x"}}).encode()  # fmt: skip

    direct = await relay.yookassa(body, peer="203.0.113.9")
    spoofed = await relay.yookassa(body, peer="203.0.113.9", **{"X-Forwarded-For": YOOKASSA_IP})

    assert direct.status_code == 403
    assert spoofed.status_code == 403  # X-Forwarded-For is believed only from trusted proxies
    assert relay.published == []


async def test_a_trusted_proxy_passes_on_the_address_yookassa_called_from(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    payment_id = await redirect_deposit(bus, fake, user)
    fake.pay(payment_id)
    body = fake.notification("payment.succeeded", payment_id)

    response = await relay.yookassa(
        body, peer="10.1.2.3", **{"X-Forwarded-For": f"198.51.100.7, {YOOKASSA_IP}"}
    )

    assert response.status_code == 200
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)


async def test_a_notification_the_api_does_not_confirm_is_not_trusted(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    payment_id = await redirect_deposit(bus, fake, user)
    forged = json.loads(fake.notification("payment.succeeded", payment_id))
    forged["object"]["status"] = "succeeded"  # the payment is still pending at YooKassa

    response = await relay.yookassa(json.dumps(forged).encode())
    await asyncio.sleep(1.5)

    assert response.status_code == 200  # accepted for checking: YooKassa would resend for a day
    assert not bus.events_of("deposit.completed", lambda d: d["user_id"] == user)
    history = await bus.call("billing.wallet.transactions", {"user_id": user})
    assert history["data"]["items"][0]["status"] == "processing"


async def test_a_canceled_payment_fails_the_deposit_with_the_reason(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    payment_id = await redirect_deposit(bus, fake, user)
    fake.cancel(payment_id, reason="insufficient_funds")

    assert (
        await relay.yookassa(fake.notification("payment.canceled", payment_id))
    ).status_code == 200

    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert failed["data"]["failure_code"] == "insufficient_funds"


async def test_a_saved_method_is_charged_at_once_for_a_recurring_deposit(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    first = await redirect_deposit(bus, fake, user)  # the first payment saves the card
    fake.pay(first)
    await relay.yookassa(fake.notification("payment.succeeded", first))
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    method = fake.payments[first]["payment_method"]["id"]

    reply = await bus.call(
        DEPOSIT, yookassa_deposit(user, "250.00", payment_method_id=method, return_url=None)
    )

    assert reply["data"]["transaction"]["status"] == "completed"
    assert reply["data"]["payment_action"] is None
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def test_a_redirect_deposit_without_return_url_is_a_provider_error(bus: Bus) -> None:
    reply = await bus.call(DEPOSIT, yookassa_deposit(new_user(), return_url=None))
    assert reply["error"]["code"] == "provider_error"
    assert "return_url" in reply["error"]["message"]


async def test_a_refund_notification_takes_the_deposit_back(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    import yookassa

    fake, _ = yookassa_fake
    user = new_user()
    payment_id = await redirect_deposit(bus, fake, user)
    fake.pay(payment_id)
    await relay.yookassa(fake.notification("payment.succeeded", payment_id))
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    refund = await asyncio.to_thread(
        yookassa.Refund.create,
        {"payment_id": payment_id, "amount": {"value": "100.00", "currency": "RUB"}},
        uuid.uuid4().hex,
    )

    assert (await relay.yookassa(fake.refund_notification(refund.id))).status_code == 200

    for _ in range(50):
        if await balance(bus, user) == "0.00":
            break
        await asyncio.sleep(0.1)
    assert await balance(bus, user) == "0.00"
