"""A saved payment method charges its owner only: the attacks on another user's card.

YooKassa takes a saved `payment_method_id` at face value, so the worker itself accepts
one only if `payment_methods` says it is this user's; Stripe refuses a PaymentMethod
attached to another customer (the worker always passes this user's customer). Each test
does what the attacker did and asserts nothing was charged and nothing moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.relay import Relay
from support.rpc import Bus
from support.snapshot import assert_ledger_sound, state_of

pytestmark = pytest.mark.integration

DEPOSIT, SUBSCRIBE = "billing.wallet.deposit", "billing.subscription.create"


def new_user(role: str) -> str:
    return f"pm-{role}-{uuid.uuid4().hex[:8]}"


def key() -> str:
    return uuid.uuid4().hex


async def unchanged(worker: Worker, users: list[str], attack: Callable[[], Awaitable[Any]]) -> Any:
    async with driver_connection(worker.engine) as db:
        before = await state_of(db, users)
    result = await attack()
    async with driver_connection(worker.engine) as db:
        assert await state_of(db, users) == before
        await assert_ledger_sound(db, users)
    return result


async def plan(bus: Bus, currency: str, price: str, **terms: Any) -> str:
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": price, "currency": currency}, **terms},
    )  # fmt: skip
    assert reply["ok"], reply
    return code


def refused_method(method: str, provider: str = "yookassa") -> dict[str, Any]:
    return {"ok": False, "error": {"code": "not_found",
            "message": f"no saved {provider} payment method {method}",
            "details": {"payment_method_id": method}}}  # fmt: skip


# --- YooKassa ----------------------------------------------------------------------------


def yookassa_deposit(user: str, amount: str = "100.00", **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "provider": "yookassa",
            "amount": {"amount": amount, "currency": "RUB"}, **extra}  # fmt: skip


async def saved_yookassa_method(bus: Bus, relay: Relay, fake: FakeYooKassa, user: str) -> str:
    """The user's first payment through the redirect, which YooKassa saves the card of."""
    reply = await bus.call(DEPOSIT, yookassa_deposit(user, return_url="https://shop.example/r"))
    assert reply["ok"], reply
    transaction_id = reply["data"]["transaction"]["id"]
    [payment] = [p for p in fake.payments.values()
                 if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
    fake.pay(payment["id"])
    assert (
        await relay.yookassa(fake.notification("payment.succeeded", payment["id"]))
    ).status_code == 200
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
    method = str(payment["payment_method"]["id"])
    assert method in fake.saved_methods
    return method


async def test_another_users_saved_yookassa_method_cannot_fund_a_deposit(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    method = await saved_yookassa_method(bus, relay, fake, owner)
    payments = len(fake.payments)

    async def attack() -> dict[str, Any]:
        return await bus.call(DEPOSIT, yookassa_deposit(attacker, "250.00",
                                                         payment_method_id=method))  # fmt: skip

    reply = await unchanged(worker, [owner, attacker], attack)

    assert reply == refused_method(method)
    assert len(fake.payments) == payments  # YooKassa was never asked to charge the card
    # the owner's own recurring deposit with it still goes through at once
    own = await bus.call(DEPOSIT, yookassa_deposit(owner, "250.00", payment_method_id=method))
    assert own["data"]["transaction"]["status"] == "completed", own
    assert len(fake.payments) == payments + 1


async def test_a_yookassa_method_we_never_saved_for_the_user_is_refused_before_charging(
    bus: Bus, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user("guesser")
    method = fake.add_saved_method()  # saved at YooKassa (for somebody), unknown to us
    payments = len(fake.payments)

    async def attack() -> dict[str, Any]:
        return await bus.call(DEPOSIT, yookassa_deposit(user, payment_method_id=method))

    reply = await unchanged(worker, [user], attack)

    assert reply == refused_method(method)
    assert len(fake.payments) == payments


@pytest.mark.parametrize("trial_days", [0, 7], ids=["charged at once", "after a trial"])
async def test_another_users_saved_yookassa_method_cannot_pay_a_subscription(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str],
    trial_days: int,
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    method = await saved_yookassa_method(bus, relay, fake, owner)
    code = await plan(bus, "RUB", "499.00", trial_days=trial_days)
    payments = len(fake.payments)

    async def attack() -> dict[str, Any]:
        return await bus.call(
            SUBSCRIBE,
            {"idempotency_key": key(), "user_id": attacker, "plan_code": code,
             "payment_source": "yookassa", "payment_method_id": method},
        )  # fmt: skip

    reply = await unchanged(worker, [owner, attacker], attack)

    assert reply == refused_method(method)
    assert len(fake.payments) == payments
    listing = await bus.call("billing.subscription.get", {"user_id": attacker})
    assert listing["data"]["subscriptions"] == []
    own = await bus.call(
        SUBSCRIBE,
        {"idempotency_key": key(), "user_id": owner, "plan_code": code,
         "payment_source": "yookassa", "payment_method_id": method},
    )  # fmt: skip
    assert own["ok"], own
    assert own["data"]["subscription"]["status"] == ("trialing" if trial_days else "active")


# --- Stripe ------------------------------------------------------------------------------


async def stripe_customer_with_saved_card(bus: Bus, fake: FakeStripe, user: str) -> str:
    """The user's Stripe customer (made by a first deposit) and a card saved for it."""
    reply = await bus.call(
        DEPOSIT,
        {"idempotency_key": key(), "user_id": user, "provider": "stripe",
         "amount": {"amount": "5.00", "currency": "USD"}, "payment_method_id": "pm_card_visa"},
    )  # fmt: skip
    assert reply["data"]["transaction"]["status"] == "completed", reply
    [customer] = [c["id"] for c in fake.customers.values() if c["metadata"]["user_id"] == user]
    return fake.attach_payment_method(customer)


async def test_stripe_refuses_another_users_saved_card_for_a_deposit_or_a_subscription(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    owner, attacker = new_user("owner"), new_user("attacker")
    method = await stripe_customer_with_saved_card(bus, fake, owner)
    code = await plan(bus, "USD", "10.00", stripe_price_id="price_pro_monthly")

    def charged() -> list[str]:
        return [pi["id"] for pi in fake.payment_intents.values()
                if pi["payment_method"] == method and pi["status"] == "succeeded"]  # fmt: skip

    async def attack() -> list[dict[str, Any]]:
        deposit = await bus.call(
            DEPOSIT,
            {"idempotency_key": key(), "user_id": attacker, "provider": "stripe",
             "amount": {"amount": "50.00", "currency": "USD"}, "payment_method_id": method},
        )  # fmt: skip
        subscription = await bus.call(
            SUBSCRIBE,
            {"idempotency_key": key(), "user_id": attacker, "plan_code": code,
             "payment_source": "stripe", "payment_method_id": method},
        )  # fmt: skip
        return [deposit, subscription]

    replies = await unchanged(worker, [owner, attacker], attack)

    assert [reply["ok"] for reply in replies] == [False, False], replies
    assert {reply["error"]["code"] for reply in replies} == {"provider_error"}
    assert all("different Customer" in reply["error"]["message"] for reply in replies)
    assert charged() == []
    assert not [s for s in fake.subscriptions.values() if s["metadata"].get("user_id") == attacker]
    own = await bus.call(
        DEPOSIT,
        {"idempotency_key": key(), "user_id": owner, "provider": "stripe",
         "amount": {"amount": "50.00", "currency": "USD"}, "payment_method_id": method},
    )  # fmt: skip
    assert own["data"]["transaction"]["status"] == "completed", own
    assert len(charged()) == 1
