"""Stripe deposits through the real SDK against the HTTP fake, completed via the relay."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe, sign
from support.attacker import stripe_refund
from support.relay import WEBHOOK_SECRET, Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


def stripe_deposit(user: str, amount: str = "20.00", **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "amount": {"amount": amount, "currency": "USD"},
        "provider": "stripe",
        **extra,
    }


def new_user() -> str:
    return f"stripe-user-{uuid.uuid4().hex[:8]}"


async def balance(bus: Bus, user: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def pending_deposit(
    bus: Bus, fake: FakeStripe, user: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    reply = await bus.call(DEPOSIT, stripe_deposit(user))
    assert reply["ok"], reply
    [intent] = [
        pi for pi in fake.payment_intents.values()
        if pi["metadata"]["transaction_id"] == reply["data"]["transaction"]["id"]
    ]  # fmt: skip
    return reply["data"], intent


async def test_a_stripe_deposit_completes_when_stripe_calls_the_relay_with_a_signed_webhook(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()

    data, intent = await pending_deposit(bus, fake, user)

    assert data["transaction"]["status"] == "processing"
    assert data["payment_action"] == {
        "type": "client_secret", "client_secret": intent["client_secret"], "confirmation_url": None,
    }  # fmt: skip
    assert intent["amount"] == 2000
    assert intent["currency"] == "usd"
    assert intent["customer"] in fake.customers
    succeeded = fake.succeed(intent["id"])
    response = await relay.stripe(fake.event("payment_intent.succeeded", succeeded))
    assert response.status_code == 200
    done = await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert done["data"]["provider"] == "stripe"
    assert await balance(bus, user) == "20.00"


async def test_the_same_webhook_twice_completes_once_and_a_late_failure_changes_nothing(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    _, intent = await pending_deposit(bus, fake, user)
    webhook = fake.event("payment_intent.succeeded", fake.succeed(intent["id"]))

    assert (await relay.stripe(webhook)).status_code == 200
    assert (await relay.stripe(webhook)).status_code == 200
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    late = fake.event(
        "payment_intent.payment_failed", {**intent, "status": "requires_payment_method"}
    )
    assert (await relay.stripe(late)).status_code == 200
    await asyncio.sleep(1)

    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 1
    assert not bus.events_of("payment.failed", lambda d: d["user_id"] == user)
    assert await balance(bus, user) == "20.00"


@pytest.mark.parametrize(
    "forgery",
    ["wrong secret", "tampered body", "stale timestamp", "future timestamp", "missing header",
     "garbage header"],
)  # fmt: skip
async def test_a_forged_stripe_webhook_gets_400_and_nothing_is_published(
    relay: Relay, stripe_fake: tuple[FakeStripe, str], forgery: str
) -> None:
    fake, _ = stripe_fake
    body = fake.event("payment_intent.succeeded", {"id": "pi_forged", "object": "payment_intent"})
    now = int(time.time())
    headers = {
        "wrong secret": {"Stripe-Signature": sign(body, "whsec_attacker")},
        "tampered body": {
            "Stripe-Signature": sign(body.replace(b"pi_forged", b"pi_other"), WEBHOOK_SECRET)
        },
        "stale timestamp": {"Stripe-Signature": sign(body, WEBHOOK_SECRET, now - 3600)},
        "future timestamp": {"Stripe-Signature": sign(body, WEBHOOK_SECRET, now + 3600)},
        "missing header": {"X-Nothing": "1"},
        "garbage header": {"Stripe-Signature": "t=abc,v1=zzz"},
    }[forgery]

    response = await relay.stripe(body, **headers)

    assert response.status_code == 400
    assert response.json()["outcome"] == "forged"
    assert relay.published == []


async def test_a_validly_signed_body_that_is_not_an_event_gets_400(relay: Relay) -> None:
    response = await relay.stripe(b"[1, 2, 3]")
    assert response.status_code == 400
    assert relay.published == []


async def test_a_body_over_one_mebibyte_gets_413(relay: Relay) -> None:
    body = b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = await relay.stripe(body)
    assert response.status_code == 413
    assert relay.published == []


async def test_an_event_type_billing_does_not_act_on_is_acknowledged_not_dead_lettered(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    event_id = f"evt_{uuid.uuid4().hex}"
    body = fake.event("customer.created", {"id": "cus_x", "object": "customer"}, event_id=event_id)

    assert (await relay.stripe(body)).status_code == 200
    await asyncio.sleep(1)

    assert not bus.dead_letters.matching(lambda m: m.message_id == event_id)


async def test_a_saved_card_completes_the_deposit_at_once(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()

    reply = await bus.call(DEPOSIT, stripe_deposit(user, payment_method_id="pm_card_visa"))

    assert reply["data"]["transaction"]["status"] == "completed"
    assert reply["data"]["payment_action"] is None
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert await balance(bus, user) == "20.00"
    [intent] = [pi for pi in fake.payment_intents.values() if pi["metadata"]["user_id"] == user]
    assert intent["status"] == "succeeded"
    assert intent["payment_method"] == "pm_card_visa"


async def test_a_declined_card_fails_the_deposit_with_the_decline_code(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    user = new_user()

    reply = await bus.call(
        DEPOSIT, stripe_deposit(user, payment_method_id="pm_card_chargeDeclined")
    )

    assert reply["ok"] is True
    assert reply["data"]["transaction"]["status"] == "failed"
    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert failed["data"]["failure_code"] == "generic_decline"
    assert await balance(bus, user) == "0.00"


async def test_one_stripe_customer_per_user_and_one_intent_per_command(
    bus: Bus, stripe_fake: tuple[FakeStripe, str], worker: Worker
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    command = stripe_deposit(user)

    first = await bus.call(DEPOSIT, command)
    again = await bus.call(DEPOSIT, command)
    other = await bus.call(DEPOSIT, stripe_deposit(user, "5.00"))

    assert again == first
    assert other["ok"]
    customers = [c for c in fake.customers.values() if c["metadata"].get("user_id") == user]
    assert len(customers) == 1
    intents = [pi for pi in fake.payment_intents.values() if pi["metadata"]["user_id"] == user]
    assert len(intents) == 2
    keys = {r.headers["idempotency-key"] for r in fake.calls("POST", "/v1/payment_intents")}
    assert f"pi-{first['data']['transaction']['id']}" in keys


async def test_a_timed_out_call_that_stripe_did_process_is_retried_without_a_second_intent(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    fake.delay_seconds = 1.5  # over the worker's 1 s timeout; Stripe still creates the intent

    async def heal() -> None:
        await asyncio.sleep(1.2)
        fake.delay_seconds = 0

    healing = asyncio.create_task(heal())
    reply = await bus.call(DEPOSIT, stripe_deposit(user), timeout=30)
    await healing

    assert reply["ok"], reply
    intents = [pi for pi in fake.payment_intents.values() if pi["metadata"]["user_id"] == user]
    assert len(intents) == 1


async def test_a_provider_that_keeps_timing_out_is_retried_then_dead_lettered_with_the_reason(
    bus: Bus, stripe_fake: tuple[FakeStripe, str], settings: Settings
) -> None:
    fake, _ = stripe_fake
    fake.delay_seconds = 3
    command = stripe_deposit(new_user())

    reply = await bus.call(DEPOSIT, command, timeout=60)

    assert reply["error"]["code"] == "internal_error"
    [dead] = await bus.dead_letters.wait_for(lambda m: json.loads(m.body) == command)
    reason = str(dead.headers["x-billing-reason"])
    assert reason.startswith(f"failed {settings.max_deliveries} times")
    assert "Stripe" in reason
    fake.delay_seconds = 0


async def test_a_stripe_refusal_is_provider_error_with_stripes_message(
    bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    await bus.call(DEPOSIT, stripe_deposit(user, "1.00"))  # the customer exists now
    fake.fail_next(status=400)

    reply = await bus.call(DEPOSIT, stripe_deposit(user))

    assert reply["ok"] is False
    assert reply["error"]["code"] == "provider_error"
    assert "Traceback" not in reply["error"]["message"]
    assert reply["error"]["message"].startswith("Stripe refused the request")


async def test_the_reconciler_completes_a_deposit_whose_webhook_never_came(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    _, intent = await pending_deposit(bus, fake, user)
    fake.succeed(intent["id"])
    worker.reconciler.after_seconds = 0

    settled = await worker.reconciler.run_once()

    assert settled >= 1
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert await balance(bus, user) == "20.00"


async def test_two_reconcilers_never_reconcile_the_same_transaction_at_once(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    intents = [(await pending_deposit(bus, fake, user))[1] for _ in range(6)]
    for intent in intents:
        fake.succeed(intent["id"])
    worker.reconciler.after_seconds = 1  # also the lease a claim holds against the others
    other = type(worker.reconciler)(
        worker.engine, worker.service, worker.reconciler.gateways, after_seconds=1,
        interval_seconds=60,
    )  # fmt: skip
    await asyncio.sleep(1.2)
    before = len(fake.requests)

    await asyncio.gather(worker.reconciler.run_once(), other.run_once())

    reads = [r.path for r in fake.requests[before:] if r.method == "GET"]
    mine = [f"/v1/payment_intents/{intent['id']}" for intent in intents]
    assert sorted(path for path in reads if path in mine) == sorted(mine)  # each exactly once
    await bus.event("deposit.completed", lambda d: d["user_id"] == user, count=6)
    assert await balance(bus, user) == "120.00"


async def test_a_charge_refunded_event_takes_the_deposit_back_off_the_balance(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_fake
    user = new_user()
    _, intent = await pending_deposit(bus, fake, user)
    succeeded = fake.succeed(intent["id"])
    await relay.stripe(fake.event("payment_intent.succeeded", succeeded))
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    await stripe_refund(base, intent["id"], 2000)  # the refund really happens at Stripe
    charge = fake.charges[succeeded["latest_charge"]]

    assert (await relay.stripe(fake.event("charge.refunded", charge))).status_code == 200

    for _ in range(50):
        if await balance(bus, user) == "0.00":
            break
        await asyncio.sleep(0.1)
    assert await balance(bus, user) == "0.00"
    history = await bus.call("billing.wallet.transactions", {"user_id": user})
    refund, deposit = history["data"]["items"]  # newest first: the refund is its own row
    assert (deposit["kind"], deposit["status"]) == ("deposit", "refunded")
    assert (refund["kind"], refund["status"]) == ("refund", "completed")
    assert refund["amount"] == {"amount": "20.00", "currency": "USD"}
