"""Canceling pending deposits (`billing.wallet.deposit.cancel`) and their expiry by the
reconciler, through the real SDKs against the HTTP fakes of Stripe and YooKassa, the
sandbox, PostgreSQL and RabbitMQ.

A deposit the customer never finished is canceled at the provider and `canceled`
(`payment.failed`, `failure_code` "canceled", or "expired" when the reconciler expires
it); one the customer paid just before is `completed` and credited once, whichever of
the cancel and the provider's webhook comes first. Another user's deposit is not found.
YooKassa cannot cancel a `pending` payment: it stays processing until YooKassa expires it.
"""

from __future__ import annotations

import uuid

import pytest

from billing_worker.app import Worker
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.cancels import (
    CANCEL,
    DEPOSIT,
    audit_clean,
    balance,
    cancel_of,
    deposit_of,
    new_user,
    pending,
    stripe_intent,
    trail,
    yookassa_payment,
)
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the reconciler's expiry sees every row."""
    return fresh_database_url


async def test_a_pending_stripe_deposit_is_canceled_at_stripe_once_whatever_the_redeliveries(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    transaction_id = await pending(bus, user, "stripe")  # the client_secret never confirmed
    command = cancel_of(user, transaction_id)

    reply = await bus.call(CANCEL, command)
    again = await bus.call(CANCEL, command)  # a redelivery

    assert reply["ok"], reply
    assert reply["data"]["transaction"]["status"] == "canceled"
    assert again == reply
    intent = stripe_intent(fake, transaction_id)
    assert intent["status"] == "canceled"
    assert len(fake.calls("POST", f"/v1/payment_intents/{intent['id']}/cancel")) == 1
    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert (failed["data"]["status"], failed["data"]["failure_code"]) == ("canceled", "canceled")
    assert await balance(bus, user) == "0.00"
    await audit_clean(worker, user)


async def test_the_customer_paying_just_before_the_cancel_wins_and_is_credited_once(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    transaction_id = await pending(bus, user, "stripe")
    paid = fake.succeed(stripe_intent(fake, transaction_id)["id"])  # its webhook still on the way

    reply = await bus.call(CANCEL, cancel_of(user, transaction_id))
    assert (await relay.stripe(fake.event("payment_intent.succeeded", paid))).status_code == 200

    assert reply["ok"], reply
    assert reply["data"]["transaction"]["status"] == "completed"
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    late = await bus.call(CANCEL, cancel_of(user, transaction_id))
    assert late["error"]["code"] == "invalid_state", late
    assert await balance(bus, user) == "20.00"
    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 1
    assert not bus.events_of("payment.failed", lambda d: d["user_id"] == user)
    await audit_clean(worker, user)


async def test_another_users_deposit_is_not_found_and_stripe_is_not_asked(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    owner, thief = new_user(), new_user()
    transaction_id = await pending(bus, owner, "stripe")

    stolen = await bus.call(CANCEL, cancel_of(thief, transaction_id))
    unknown = await bus.call(CANCEL, cancel_of(thief, str(uuid.uuid4())))

    assert stolen["error"]["code"] == unknown["error"]["code"] == "not_found", stolen
    assert stolen["error"]["message"] == unknown["error"]["message"]
    intent = stripe_intent(fake, transaction_id)
    assert intent["status"] == "requires_payment_method"
    assert fake.calls("POST", f"/v1/payment_intents/{intent['id']}/cancel") == []
    await audit_clean(worker, owner, thief)


async def test_a_completed_deposit_cannot_be_canceled(bus: Bus, worker: Worker) -> None:
    user = new_user()
    reply = await bus.call(DEPOSIT, deposit_of(user, "sandbox"))
    transaction_id = str(reply["data"]["transaction"]["id"])
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)

    refused = await bus.call(CANCEL, cancel_of(user, transaction_id))

    assert refused["error"]["code"] == "invalid_state", refused
    assert refused["error"]["details"]["status"] == "completed"
    assert await balance(bus, user) == "20.00"
    await audit_clean(worker, user)


async def test_a_pending_sandbox_deposit_is_canceled(bus: Bus, worker: Worker) -> None:
    user = new_user()
    transaction_id = await pending(bus, user, "sandbox", payment_method_id="pm_card_pending")

    reply = await bus.call(CANCEL, cancel_of(user, transaction_id))

    assert reply["data"]["transaction"]["status"] == "canceled", reply
    await bus.event("payment.failed", lambda d: d["user_id"] == user)
    await audit_clean(worker, user)


async def test_yookassa_cannot_cancel_a_pending_payment_it_stays_until_yookassa_expires_it(
    bus: Bus, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    transaction_id = await pending(bus, user, "yookassa", return_url="https://shop.example/r")
    payment = yookassa_payment(fake, transaction_id)  # the redirect is never followed

    reply = await bus.call(CANCEL, cancel_of(user, transaction_id))

    assert reply["data"]["transaction"]["status"] == "processing", reply
    assert fake.requests_to("POST", f"/v3/payments/{payment['id']}/cancel") == []
    fake.cancel(payment["id"], reason="expired_on_confirmation")  # YooKassa's own expiry
    worker.reconciler.after_seconds = 0
    await worker.reconciler.run_once()
    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert failed["data"]["status"] == "failed"
    await audit_clean(worker, user)


async def test_a_yookassa_payment_waiting_for_capture_is_canceled_and_one_paid_first_completes(
    bus: Bus, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    held = await pending(bus, user, "yookassa", return_url="https://shop.example/r")
    paid = await pending(bus, user, "yookassa", return_url="https://shop.example/r")
    yookassa_payment(fake, held)["status"] = "waiting_for_capture"  # authorized, not captured
    fake.pay(yookassa_payment(fake, paid)["id"])  # the customer paid; no notification yet

    canceled = await bus.call(CANCEL, cancel_of(user, held))
    completed = await bus.call(CANCEL, cancel_of(user, paid))

    assert canceled["data"]["transaction"]["status"] == "canceled", canceled
    assert yookassa_payment(fake, held)["status"] == "canceled"
    assert completed["data"]["transaction"]["status"] == "completed", completed
    assert await balance(bus, user, "RUB") == "20.00"
    await audit_clean(worker, user)


async def test_the_reconciler_expires_a_deposit_nobody_paid_and_a_paid_one_completes(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    abandoned = await pending(bus, user, "stripe")
    raced = await pending(bus, user, "stripe")
    paid = fake.succeed(stripe_intent(fake, raced)["id"])  # paid as the expiry comes
    worker.reconciler.expire_after_seconds = 0
    worker.reconciler.after_seconds = 0

    assert await worker.reconciler.run_once() >= 2
    assert (await relay.stripe(fake.event("payment_intent.succeeded", paid))).status_code == 200

    assert stripe_intent(fake, abandoned)["status"] == "canceled"
    failed = await bus.event("payment.failed", lambda d: d["transaction_id"] == abandoned)
    assert (failed["data"]["status"], failed["data"]["failure_code"]) == ("canceled", "expired")
    assert (await trail(worker, abandoned))[-1] == ("canceled", "stripe:expiry.canceled")
    assert (await trail(worker, raced))[-1] == ("completed", "stripe:expiry.succeeded")
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == raced)
    assert await balance(bus, user) == "20.00"
    assert len(bus.events_of("deposit.completed", lambda d: d["user_id"] == user)) == 1
    await audit_clean(worker, user)


async def test_a_young_payment_is_not_expired(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    transaction_id = await pending(bus, user, "stripe")
    worker.reconciler.after_seconds = 0  # the default expiry (a day) is far away

    await worker.reconciler.run_once()

    assert stripe_intent(fake, transaction_id)["status"] == "requires_payment_method"
    assert (await trail(worker, transaction_id))[-1][0] == "processing"


async def test_a_cancel_whose_every_delivery_failed_at_stripe_is_finished_by_the_reconciler(
    bus: Bus, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    transaction_id = await pending(bus, user, "stripe")
    command = cancel_of(user, transaction_id)
    fake.fail_next(500, n=worker.settings.max_deliveries)

    gave_up = await bus.call(CANCEL, command)

    assert gave_up["error"]["code"] == "internal_error", gave_up
    worker.reconciler.after_seconds = 0
    await worker.reconciler.run_once()
    assert stripe_intent(fake, transaction_id)["status"] == "canceled"
    answer = await bus.call(CANCEL, command)  # the same key: the reconciler's reply
    assert answer["data"]["transaction"]["status"] == "canceled", answer
    await audit_clean(worker, user)


async def test_a_yookassa_payment_that_failed_before_the_cancel_fails_with_its_reason(
    bus: Bus, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    transaction_id = await pending(bus, user, "yookassa", return_url="https://shop.example/r")
    fake.cancel(yookassa_payment(fake, transaction_id)["id"], reason="insufficient_funds")

    reply = await bus.call(CANCEL, cancel_of(user, transaction_id))

    assert reply["data"]["transaction"]["status"] == "failed", reply
    failed = await bus.event("payment.failed", lambda d: d["user_id"] == user)
    assert failed["data"]["failure_code"] == "insufficient_funds"
    await audit_clean(worker, user)
