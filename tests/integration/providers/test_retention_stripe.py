"""A Stripe deposit retried after its idempotency record expired is not charged again.

Stripe keeps an idempotency key for 24 hours; the worker keeps a command's record for
BILLING_IDEMPOTENCY_RETENTION_DAYS. A retry after both is a new request to Stripe: only
the worker can stop it from charging the card a second time.
"""

from __future__ import annotations

import uuid

import pytest

from billing_worker.app import Worker
from billing_worker.jobs.retention import Retention
from fakes.stripe_api import FakeStripe
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url  # retention at 0 days forgets every reply of the database


async def test_a_stripe_deposit_retried_after_the_window_is_not_charged_twice(
    worker: Worker, bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = f"stripe-late-{uuid.uuid4().hex[:8]}"
    deposit = {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "stripe",
               "amount": {"amount": "20.00", "currency": "USD"},
               "payment_method_id": "pm_card_visa"}  # fmt: skip
    first = await bus.call(DEPOSIT, deposit)
    assert first["data"]["transaction"]["status"] == "completed", first
    assert len(fake.charges) == 1

    retention = Retention(worker.engine, record_days=0, outbox_days=7, interval_seconds=3600)
    assert (await retention.run_once())["idempotency_records"] >= 1
    fake.expire_idempotency_keys()  # a day later at Stripe
    retried = await bus.call(DEPOSIT, deposit)

    assert len(fake.charges) == 1, "the card was charged again"
    assert len(fake.calls("POST", "/v1/payment_intents")) == 1
    assert retried["ok"] is False, retried
    assert retried["error"]["code"] == "idempotency_conflict"
    assert retried["error"]["details"]["transaction_id"] == first["data"]["transaction"]["id"]
    balance = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    assert balance["data"]["accounts"][0]["balance"]["amount"] == "20.00"
