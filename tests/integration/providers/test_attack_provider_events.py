"""Attacks on `billing.provider-events`, each written as the attack before the fix.

The attacker is any broker user: it publishes forged Stripe or YooKassa callbacks to the
queue itself, without the webhook secret (`Attacker.forge`). Where the variant
`signed` runs, the same forged body also goes through the relay validly signed, as a
leaked webhook secret or a replayed genuine-looking event would: the defence there is
that the worker believes only what the provider's API says when asked.

Every test ends by checking that no balance, transaction, subscription or payment method
changed wrongly, that no wrong `payment.success` was written to the outbox, and that the
audit finds nothing. Each test runs on a database of its own, so its audit is its own.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from billing_worker.app import Worker
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.attacker import (
    Attacker,
    Ledger,
    delivered,
    handled,
    intent_id_of,
    stripe_event,
    stripe_refund,
    until_handled,
    yookassa_notification,
    yookassa_refund,
)
from support.invariants import connect
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """A database per test: the reconciler sees every row, the audit judges only ours."""
    return fresh_database_url


@pytest.fixture
async def attacker(worker: Worker, rabbitmq_url: str) -> AsyncIterator[Attacker]:
    attacker = Attacker(worker, rabbitmq_url)
    await attacker.start()
    yield attacker
    await attacker.close()


@pytest.fixture
async def ledger(database_url: str, worker: Worker) -> AsyncIterator[Ledger]:
    async with connect(database_url) as db:
        yield Ledger(db)


def new_user() -> str:
    return f"attack-{uuid.uuid4().hex[:8]}"


def value_of(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


async def send_forged(
    forgery: str, attacker: Attacker, relay: Relay, worker: Worker, body: bytes
) -> None:
    """`unsigned`: the attacker publishes a Stripe event itself, with no signature.
    `signed`: the same body, validly signed, through the relay (a leaked secret)."""
    if forgery == "unsigned":
        await attacker.forge("stripe", body)
        return
    before, published = handled(worker), len(relay.published)
    await relay.stripe(body)
    if len(relay.published) > published:  # the relay may refuse it: nothing to wait for
        await until_handled(worker, before + 1)


# --- genuine flows, per provider -----------------------------------------------------------


@dataclass
class Paid:
    user: str
    transaction_id: str
    ref: str  # the PaymentIntent id / the YooKassa payment id
    amount_minor: int


@dataclass
class StripeShop:
    """Genuine Stripe flows: the customer pays, staff refund, Stripe calls the relay."""

    bus: Bus
    relay: Relay
    worker: Worker
    fake: FakeStripe
    base: str
    currency = "USD"

    async def pending_deposit(self, amount: str = "20.00") -> Paid:
        user = new_user()
        reply = await self.bus.call(
            DEPOSIT,
            {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "stripe",
             "amount": {"amount": amount, "currency": self.currency}},
        )  # fmt: skip
        assert reply["ok"], reply
        data = reply["data"]
        assert data["transaction"]["status"] == "processing"
        intent = intent_id_of(data["payment_action"]["client_secret"])
        minor = int(amount.replace(".", ""))
        return Paid(user, data["transaction"]["id"], intent, minor)

    async def pay(self, deposit: Paid) -> None:
        succeeded = self.fake.succeed(deposit.ref)
        await self.deliver(self.fake.event("payment_intent.succeeded", succeeded))

    async def paid_deposit(self, amount: str = "20.00") -> Paid:
        deposit = await self.pending_deposit(amount)
        await self.pay(deposit)
        return deposit

    def charge_of(self, deposit: Paid) -> dict[str, Any]:
        return self.fake.charges[self.fake.payment_intents[deposit.ref]["latest_charge"]]

    async def refund(self, deposit: Paid, minor: int, *, claimed: int | None = None) -> bytes:
        """Refund `minor` at Stripe and deliver Stripe's `charge.refunded` for it.
        `claimed`: what Stripe's state then says the refund was (tampered)."""
        refund = await stripe_refund(self.base, deposit.ref, minor)
        charge = self.charge_of(deposit)
        if claimed is not None:
            self.fake.refunds[refund["id"]]["amount"] = claimed
            charge["amount_refunded"] += claimed - minor
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        body = self.fake.event("charge.refunded", copy.deepcopy(charge))
        await self.deliver(body)
        return body

    async def deliver(self, body: bytes) -> None:
        response = await delivered(self.worker, lambda: self.relay.stripe(body))
        assert response.status_code == 200, response.text


@dataclass
class YooKassaShop:
    """Genuine YooKassa flows: the customer pays, staff refund, YooKassa notifies."""

    bus: Bus
    relay: Relay
    worker: Worker
    fake: FakeYooKassa
    base: str
    currency = "RUB"

    async def pending_deposit(self, amount: str = "100.00") -> Paid:
        user = new_user()
        reply = await self.bus.call(
            DEPOSIT,
            {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "yookassa",
             "amount": {"amount": amount, "currency": self.currency},
             "return_url": "https://shop.example/return"},
        )  # fmt: skip
        assert reply["ok"], reply
        transaction_id = reply["data"]["transaction"]["id"]
        [payment_id] = [
            pid for pid, p in self.fake.payments.items()
            if p["metadata"]["transaction_id"] == transaction_id
        ]  # fmt: skip
        return Paid(user, transaction_id, payment_id, int(amount.replace(".", "")))

    async def pay(self, deposit: Paid) -> None:
        self.fake.pay(deposit.ref)
        await self.deliver(self.fake.notification("payment.succeeded", deposit.ref))

    async def paid_deposit(self, amount: str = "100.00") -> Paid:
        deposit = await self.pending_deposit(amount)
        await self.pay(deposit)
        return deposit

    async def refund(self, deposit: Paid, minor: int, *, claimed: int | None = None) -> bytes:
        """Refund `minor` at YooKassa and deliver its `refund.succeeded` notification.
        `claimed`: what YooKassa's state then says the refund was (tampered)."""
        refund = await yookassa_refund(self.base, deposit.ref, value_of(minor), self.currency)
        if claimed is not None:
            self.fake.refunds[refund["id"]]["amount"]["value"] = value_of(claimed)
            payment = self.fake.payments[deposit.ref]
            refunded = int(payment["refunded_amount"]["value"].replace(".", ""))
            payment["refunded_amount"]["value"] = value_of(refunded + claimed - minor)
        body = self.fake.refund_notification(refund["id"])
        await self.deliver(body)
        return body

    async def deliver(self, body: bytes) -> None:
        response = await delivered(self.worker, lambda: self.relay.yookassa(body))
        assert response.status_code == 200, response.text


Shop = StripeShop | YooKassaShop


@pytest.fixture
def stripe_shop(
    bus: Bus, relay: Relay, worker: Worker, stripe_fake: tuple[FakeStripe, str]
) -> StripeShop:
    return StripeShop(bus, relay, worker, *stripe_fake)


@pytest.fixture
def yookassa_shop(
    bus: Bus, relay: Relay, worker: Worker, yookassa_fake: tuple[FakeYooKassa, str]
) -> YooKassaShop:
    return YooKassaShop(bus, relay, worker, *yookassa_fake)


@pytest.fixture(params=["stripe", "yookassa"])
def shop(request: pytest.FixtureRequest) -> Shop:
    return request.getfixturevalue(f"{request.param}_shop")  # type: ignore[no-any-return]


async def assert_completed_once(ledger: Ledger, deposit: Paid, currency: str) -> None:
    """The deposit completed, credited exactly once with its own amount."""
    assert await ledger.status(deposit.transaction_id) == "completed"
    assert await ledger.balance(deposit.user, currency) == deposit.amount_minor
    completed = await ledger.events("deposit.completed", deposit.user)
    assert [e["transaction_id"] for e in completed] == [deposit.transaction_id]
    successes = await ledger.events("payment.success", deposit.user)
    assert [e["amount"]["amount"] for e in successes] == [value_of(deposit.amount_minor)]


# --- A1: a forged payment_intent.succeeded -------------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "signed"])
async def test_a1_a_forged_payment_intent_succeeded_completes_no_deposit(
    forgery: str, stripe_shop: StripeShop, attacker: Attacker, relay: Relay, worker: Worker,
    ledger: Ledger,
) -> None:  # fmt: skip
    deposit = await stripe_shop.pending_deposit("20.00")
    looks_paid = copy.deepcopy(stripe_shop.fake.payment_intents[deposit.ref]) | {
        "status": "succeeded",
        "amount_received": 2000,
        "latest_charge": "ch_forged",
    }

    await send_forged(
        forgery, attacker, relay, worker, stripe_event("payment_intent.succeeded", looks_paid)
    )

    assert await ledger.status(deposit.transaction_id) == "processing"
    assert await ledger.balance(deposit.user, "USD") == 0
    assert await ledger.events("payment.success", deposit.user) == []

    await stripe_shop.pay(deposit)  # the customer really pays; Stripe calls the relay

    await assert_completed_once(ledger, deposit, "USD")
    await ledger.assert_audit_clean()


# --- A2: a forged charge.refunded ----------------------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "signed"])
async def test_a2_a_forged_charge_refunded_takes_nothing_back(
    forgery: str, stripe_shop: StripeShop, attacker: Attacker, relay: Relay, worker: Worker,
    ledger: Ledger,
) -> None:  # fmt: skip
    deposit = await stripe_shop.paid_deposit("20.00")
    looks_refunded = copy.deepcopy(stripe_shop.charge_of(deposit)) | {
        "amount_refunded": 2000,
        "refunded": True,
    }

    await send_forged(
        forgery, attacker, relay, worker, stripe_event("charge.refunded", looks_refunded)
    )

    assert await ledger.status(deposit.transaction_id) == "completed"
    assert await ledger.balance(deposit.user, "USD") == 2000
    assert await ledger.transactions(deposit.user, "refund") == []
    await assert_completed_once(ledger, deposit, "USD")
    await ledger.assert_audit_clean()


# --- A3: a forged payment_intent.payment_failed --------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "signed"])
async def test_a3_a_forged_payment_failure_does_not_block_the_genuine_success(
    forgery: str, stripe_shop: StripeShop, attacker: Attacker, relay: Relay, worker: Worker,
    ledger: Ledger,
) -> None:  # fmt: skip
    deposit = await stripe_shop.pending_deposit("20.00")
    looks_declined = copy.deepcopy(stripe_shop.fake.payment_intents[deposit.ref]) | {
        "status": "requires_payment_method",
        "last_payment_error": {"type": "card_error", "code": "card_declined",
                               "decline_code": "insufficient_funds",
                               "message": "Your card has insufficient funds."},
    }  # fmt: skip

    await send_forged(
        forgery, attacker, relay, worker, stripe_event("payment_intent.payment_failed",
                                                       looks_declined)
    )  # fmt: skip

    assert await ledger.status(deposit.transaction_id) == "processing"
    assert await ledger.events("payment.failed", deposit.user) == []

    await stripe_shop.pay(deposit)

    await assert_completed_once(ledger, deposit, "USD")
    assert await ledger.events("payment.failed", deposit.user) == []
    await ledger.assert_audit_clean()


# --- A4: a forged invoice.paid with a huge amount ------------------------------------------


async def stripe_subscription(shop: StripeShop) -> tuple[str, str, dict[str, Any]]:
    """A Stripe-run subscription paid at once with a saved card: (user, our id, invoice)."""
    code = f"plan-{uuid.uuid4().hex[:8]}"
    plan = await shop.bus.call(
        "billing.plan.upsert",
        {"idempotency_key": uuid.uuid4().hex, "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": "10.00", "currency": "USD"}, "stripe_price_id": "price_pro_monthly"},
    )  # fmt: skip
    assert plan["ok"], plan
    user = new_user()
    reply = await shop.bus.call(
        "billing.subscription.create",
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "plan_code": code,
         "payment_source": "stripe", "payment_method_id": "pm_card_visa"},
    )  # fmt: skip
    assert reply["ok"], reply
    assert reply["data"]["subscription"]["status"] == "active"
    [remote] = [s for s in shop.fake.subscriptions.values() if s["metadata"]["user_id"] == user]
    invoice = shop.fake.invoices[remote["latest_invoice"]]
    assert (invoice["status"], invoice["amount_paid"]) == ("paid", 1000)
    return user, reply["data"]["subscription"]["id"], invoice


SUBSCRIPTION_STATE = ("status", "current_period_start", "current_period_end", "paid_periods")


@pytest.mark.parametrize("forgery", ["unsigned", "signed"])
async def test_a4_a_forged_invoice_paid_records_no_charge_but_stripes_own_amount(
    forgery: str, stripe_shop: StripeShop, attacker: Attacker, relay: Relay, worker: Worker,
    ledger: Ledger,
) -> None:  # fmt: skip
    user, subscription_id, invoice = await stripe_subscription(stripe_shop)
    before = await ledger.subscription(subscription_id)
    inflated = copy.deepcopy(invoice) | {"amount_paid": 99_999_999_999}

    await send_forged(forgery, attacker, relay, worker, stripe_event("invoice.paid", inflated))

    charges = await ledger.transactions(user, "subscription_charge")
    assert [c["amount_minor"] for c in charges if c["amount_minor"] != 1000] == []
    successes = await ledger.events("payment.success", user)
    assert [e["amount"]["amount"] for e in successes if e["amount"]["amount"] != "10.00"] == []
    after = await ledger.subscription(subscription_id)
    assert {k: after[k] for k in SUBSCRIPTION_STATE} == {k: before[k] for k in SUBSCRIPTION_STATE}

    # Stripe's own invoice.paid for that invoice: one charge, of Stripe's amount
    await stripe_shop.deliver(stripe_shop.fake.event("invoice.paid", invoice))

    charges = await ledger.transactions(user, "subscription_charge")
    assert [(c["amount_minor"], c["status"]) for c in charges] == [(1000, "completed")]
    successes = await ledger.events("payment.success", user)
    assert [e["amount"]["amount"] for e in successes] == ["10.00"]
    assert (await ledger.subscription(subscription_id))["status"] == "active"
    await ledger.assert_audit_clean()


# --- A5: a real refund of A's payment, named as B's ----------------------------------------


async def test_a5_a_refund_of_one_payment_cannot_be_pinned_on_another(
    yookassa_shop: YooKassaShop, attacker: Attacker, ledger: Ledger
) -> None:
    a = await yookassa_shop.paid_deposit("100.00")
    b = await yookassa_shop.paid_deposit("100.00")
    refund = await yookassa_refund(yookassa_shop.base, a.ref, "40.00")  # A's, for real
    assert refund["status"] == "succeeded"

    await attacker.forge(
        "yookassa", yookassa_notification("refund.succeeded", refund | {"payment_id": b.ref})
    )

    assert await ledger.status(b.transaction_id) == "completed"
    assert await ledger.balance(b.user, "RUB") == 10000
    assert await ledger.transactions(b.user, "refund") == []

    # YooKassa's own notification of that refund, naming A's payment
    await yookassa_shop.deliver(yookassa_shop.fake.refund_notification(refund["id"]))

    assert await ledger.balance(a.user, "RUB") == 6000
    assert await ledger.status(a.transaction_id) == "completed"
    assert [r["amount_minor"] for r in await ledger.refunds_of(a.transaction_id)] == [4000]
    assert await ledger.balance(b.user, "RUB") == 10000
    assert await ledger.status(b.transaction_id) == "completed"
    await ledger.assert_audit_clean()


# --- A6: partial refunds take back what was refunded, no more ------------------------------


async def test_a6_a_partial_refund_takes_back_only_the_refunded_amount(
    shop: Shop, ledger: Ledger
) -> None:
    deposit = await shop.paid_deposit("1000.00")

    await shop.refund(deposit, 100)  # 1.00 of 1,000.00

    assert await ledger.balance(deposit.user, shop.currency) == 99_900
    assert await ledger.status(deposit.transaction_id) == "completed"
    [refund] = await ledger.refunds_of(deposit.transaction_id)
    assert (refund["kind"], refund["amount_minor"], refund["status"]) == ("refund", 100,
                                                                          "completed")  # fmt: skip
    assert refund["currency"] == shop.currency
    await ledger.assert_audit_clean()


async def test_a6_three_partial_refunds_add_up_to_the_payment_and_redelivery_changes_nothing(
    shop: Shop, ledger: Ledger
) -> None:
    deposit = await shop.paid_deposit("100.00")
    webhooks = []

    for amount, left in ((3000, 7000), (3000, 4000), (4000, 0)):
        webhooks.append(await shop.refund(deposit, amount))
        balance = await ledger.balance(deposit.user, shop.currency)
        assert balance == left, f"after refunding {value_of(amount)}: {value_of(balance)} left"

    async def state() -> Any:
        refunds = await ledger.refunds_of(deposit.transaction_id)
        return (
            await ledger.status(deposit.transaction_id),
            await ledger.balance(deposit.user, shop.currency),
            sorted((r["kind"], r["status"], r["amount_minor"]) for r in refunds),
        )

    final = await state()
    assert final == (
        "refunded", 0,
        [("refund", "completed", 3000), ("refund", "completed", 3000),
         ("refund", "completed", 4000)],
    )  # fmt: skip
    refunds = await ledger.refunds_of(deposit.transaction_id)
    assert sum(r["amount_minor"] for r in refunds) == deposit.amount_minor

    for webhook in webhooks:  # the provider redelivers every refund webhook
        await shop.deliver(webhook)
    if isinstance(shop, StripeShop):  # and Stripe's latest state again, under a new event id
        again = json.loads(webhooks[-1]) | {"id": f"evt_{uuid.uuid4().hex[:24]}"}
        await shop.deliver(json.dumps(again).encode())

    assert await state() == final
    await ledger.assert_audit_clean()


# --- A7: a refund beyond what is left of the payment ---------------------------------------


async def test_a7_a_refund_claiming_more_than_the_payment_is_refused(
    shop: Shop, ledger: Ledger
) -> None:
    deposit = await shop.paid_deposit("100.00")

    # a real 50.00 refund the provider's (tampered) state says was 150.00
    await shop.refund(deposit, 5000, claimed=15000)

    assert await ledger.refunds_of(deposit.transaction_id) == []
    assert await ledger.balance(deposit.user, shop.currency) == 10000
    assert await ledger.status(deposit.transaction_id) == "completed"
    await ledger.assert_audit_clean()


async def test_a7_a_second_refund_beyond_what_is_left_is_refused(
    shop: Shop, ledger: Ledger
) -> None:
    deposit = await shop.paid_deposit("100.00")
    await shop.refund(deposit, 6000)
    assert await ledger.balance(deposit.user, shop.currency) == 4000

    # a real 30.00 refund the provider's (tampered) state says was 90.00: 150.00 in all
    await shop.refund(deposit, 3000, claimed=9000)

    refunds = await ledger.refunds_of(deposit.transaction_id)
    assert [r["amount_minor"] for r in refunds] == [6000]
    assert await ledger.balance(deposit.user, shop.currency) == 4000
    assert await ledger.status(deposit.transaction_id) == "completed"
    await ledger.assert_audit_clean()


# --- A8: the saved payment method comes from the API, not the notification -----------------


@pytest.mark.parametrize("real_method", ["another saved method", "none saved"])
async def test_a8_the_notification_body_cannot_choose_the_saved_payment_method(
    real_method: str, yookassa_shop: YooKassaShop, attacker: Attacker, ledger: Ledger
) -> None:
    fake = yookassa_shop.fake
    deposit = await yookassa_shop.pending_deposit("100.00")
    payment = fake.payments[deposit.ref]
    if real_method == "none saved":  # the customer unticked "remember my card"
        payment["payment_method"]["saved"] = False
    fake.pay(deposit.ref)
    genuine = json.loads(fake.notification("payment.succeeded", deposit.ref))
    attackers_method = fake.add_saved_method(f"attacker-{uuid.uuid4().hex[:8]}")
    genuine["object"]["payment_method"] = {
        "type": "bank_card", "id": attackers_method, "saved": True, "title": "Bank card *0000",
    }  # fmt: skip

    await attacker.forge("yookassa", json.dumps(genuine).encode())

    expected = set()
    if payment["payment_method"]["saved"]:
        expected = {("yookassa", payment["payment_method"]["id"])}
    assert await ledger.payment_methods(deposit.user) <= expected
    # The payment itself is real: the forged notification may complete it (on what the
    # API says) or be refused, in which case YooKassa's own notification does.
    if await ledger.status(deposit.transaction_id) == "processing":
        await yookassa_shop.deliver(fake.notification("payment.succeeded", deposit.ref))
    assert await ledger.payment_methods(deposit.user) == expected
    await assert_completed_once(ledger, deposit, "RUB")
    await ledger.assert_audit_clean()


# --- A9: pre-claimed inbox ids of the reconciler -------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "signed"])
async def test_a9_a_forged_event_cannot_pre_claim_the_reconcilers_event_id(
    forgery: str, stripe_shop: StripeShop, attacker: Attacker, relay: Relay, worker: Worker,
    ledger: Ledger,
) -> None:  # fmt: skip
    deposit = await stripe_shop.pending_deposit("20.00")
    squatter = stripe_event(
        "customer.created",
        {"id": "cus_squat", "object": "customer", "metadata": {}},
        event_id=f"reconcile:{deposit.transaction_id}:succeeded",
    )
    await send_forged(forgery, attacker, relay, worker, squatter)

    stripe_shop.fake.succeed(deposit.ref)  # the customer pays; Stripe's webhook is lost
    await ledger.db.execute(  # an hour and more later the reconciler looks
        "UPDATE transactions SET updated_at = now() - interval '2 hours' WHERE id = $1",
        uuid.UUID(deposit.transaction_id),
    )
    await worker.reconciler.run_once()

    await assert_completed_once(ledger, deposit, "USD")
    await ledger.assert_audit_clean()


# --- A10: a made-up YooKassa object is not an outage ---------------------------------------


@pytest.mark.parametrize("made_up", ["payment", "refund"])
async def test_a10_a_notification_for_an_object_yookassa_does_not_know_is_read_once(
    made_up: str, yookassa_shop: YooKassaShop, attacker: Attacker, ledger: Ledger
) -> None:
    fake = yookassa_shop.fake
    victim = await yookassa_shop.paid_deposit("100.00")
    fake_id = f"{uuid.uuid4().hex[:8]}-000f-5000-9000-{uuid.uuid4().hex[:12]}"
    amount = {"value": "100.00", "currency": "RUB"}
    if made_up == "payment":
        obj = {"id": fake_id, "status": "succeeded", "paid": True, "amount": amount,
               "metadata": {"transaction_id": victim.transaction_id}}  # fmt: skip
        notification = yookassa_notification("payment.succeeded", obj)
        path = f"/v3/payments/{fake_id}"
    else:
        obj = {"id": fake_id, "payment_id": victim.ref, "status": "succeeded", "amount": amount}
        notification = yookassa_notification("refund.succeeded", obj)
        path = f"/v3/refunds/{fake_id}"

    await attacker.forge("yookassa", notification)

    assert len(fake.requests_to("GET", path)) == 1
    assert await ledger.status(victim.transaction_id) == "completed"
    assert await ledger.balance(victim.user, "RUB") == 10000
    assert await ledger.transactions(victim.user, "refund") == []
    await ledger.assert_audit_clean()
