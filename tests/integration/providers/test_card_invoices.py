"""Invoices paid by card (`billing.invoice.pay` with source stripe / yookassa) through the
real SDKs against the HTTP fakes, confirmed via the relay, on PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

import pytest

from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

PAY = "billing.invoice.pay"


def new_user() -> str:
    return f"card-invoice-{uuid.uuid4().hex[:8]}"


async def an_invoice(bus: Bus, user: str, price: str, currency: str) -> dict[str, Any]:
    reply = await bus.call("billing.invoice.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "currency": currency,
        "lines": [{"description": "Pro", "quantity": 1,
                   "unit_price": {"amount": price, "currency": currency}}],
    })  # fmt: skip
    assert reply["ok"], reply
    return dict(reply["data"])


def pay(user: str, invoice_id: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "user_id": user, "invoice_id": invoice_id,
            "source": source, **extra}  # fmt: skip


async def invoice_status(bus: Bus, user: str, invoice_id: str) -> str:
    reply = await bus.call("billing.invoice.get", {"user_id": user, "invoice_id": invoice_id})
    return str(reply["data"]["status"])


async def ledger(bus: Bus, user: str) -> list[tuple[str, str, str]]:
    reply = await bus.call("billing.wallet.transactions", {"user_id": user})
    return sorted((t["kind"], t["status"], t["amount"]["amount"]) for t in reply["data"]["items"])


async def balance(bus: Bus, user: str, currency: str) -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": currency})
    accounts = reply["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


def stripe_intent(fake: FakeStripe, transaction_id: str) -> dict[str, Any]:
    [intent] = [pi for pi in fake.payment_intents.values()
                if pi["metadata"].get("transaction_id") == transaction_id]  # fmt: skip
    return intent


async def test_an_invoice_paid_by_stripe_only_on_stripes_confirmation_of_its_exact_amount(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user, stranger = new_user(), new_user()
    invoice = await an_invoice(bus, user, "20.00", "USD")
    theirs = await bus.call(PAY, pay(stranger, invoice["id"], "stripe"))
    assert theirs["error"]["code"] == "not_found"

    reply = await bus.call(PAY, pay(user, invoice["id"], "stripe"))

    assert reply["ok"], reply
    data = reply["data"]
    assert (data["status"], data["payment"]["status"], data["payment"]["amount"]) == (
        "open", "processing", {"amount": "20.00", "currency": "USD"},
    )  # fmt: skip
    assert data["payment_action"]["type"] == "client_secret"
    intent = stripe_intent(fake, data["payment"]["id"])
    assert (intent["amount"], intent["currency"]) == (2000, "usd")
    again = await bus.call(PAY, pay(user, invoice["id"], "stripe"))
    assert again["error"]["code"] == "invalid_state"  # one card payment in flight
    void = await bus.call("billing.invoice.void", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "invoice_id": invoice["id"],
        "reason": "changed my mind",
    })  # fmt: skip
    assert void["error"]["code"] == "invalid_state"

    # A forged webhook (Stripe still has it unpaid), then Stripe's own object with another
    # amount: neither is believed.
    forged = {**intent, "status": "succeeded"}
    assert (await relay.stripe(fake.event("payment_intent.succeeded", forged))).status_code == 200
    fake.payment_intents[intent["id"]]["amount"] = 1999  # what Stripe will say it took
    odd = fake.event("payment_intent.succeeded", fake.succeed(intent["id"]))
    assert (await relay.stripe(odd)).status_code == 200
    await asyncio.sleep(1.5)
    assert await invoice_status(bus, user, invoice["id"]) == "open"
    assert not bus.events_of("invoice.paid", lambda d: d["user_id"] == user)
    assert await ledger(bus, user) == [("deposit", "processing", "20.00")]

    fake.payment_intents[intent["id"]].update(amount=2000, amount_received=2000)
    webhook = fake.event("payment_intent.succeeded", fake.payment_intents[intent["id"]])
    assert (await relay.stripe(webhook)).status_code == 200
    assert (await relay.stripe(webhook)).status_code == 200  # a duplicated delivery
    paid = await bus.event("invoice.paid", lambda d: d["user_id"] == user)
    assert paid["data"]["invoice_id"] == invoice["id"]
    assert await invoice_status(bus, user, invoice["id"]) == "paid"
    assert await ledger(bus, user) == [
        ("deposit", "completed", "20.00"), ("invoice_payment", "completed", "20.00"),
    ]  # fmt: skip
    assert await balance(bus, user, "USD") == "0.00"
    assert len(bus.events_of("invoice.paid", lambda d: d["user_id"] == user)) == 1


async def test_an_invoice_paid_by_yookassa_through_its_redirect(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    invoice = await an_invoice(bus, user, "1500.50", "RUB")

    reply = await bus.call(
        PAY, pay(user, invoice["id"], "yookassa", return_url="https://shop.example/return")
    )

    assert reply["ok"], reply
    assert reply["data"]["payment_action"]["type"] == "redirect"
    transaction_id = reply["data"]["payment"]["id"]
    [payment_id] = [pid for pid, p in fake.payments.items()
                    if p["metadata"].get("transaction_id") == transaction_id]  # fmt: skip
    assert fake.payments[payment_id]["amount"] == {"value": "1500.50", "currency": "RUB"}
    # A notification YooKassa's API does not confirm (the payment is still pending there).
    forged = json.loads(fake.notification("payment.succeeded", payment_id))
    forged["object"]["status"] = "succeeded"
    assert (await relay.yookassa(json.dumps(forged).encode())).status_code == 200
    await asyncio.sleep(1.5)
    assert await invoice_status(bus, user, invoice["id"]) == "open"

    fake.pay(payment_id)
    response = await relay.yookassa(fake.notification("payment.succeeded", payment_id))

    assert response.status_code == 200
    await bus.event("invoice.paid", lambda d: d["user_id"] == user)
    assert await invoice_status(bus, user, invoice["id"]) == "paid"
    assert await ledger(bus, user) == [
        ("deposit", "completed", "1500.50"), ("invoice_payment", "completed", "1500.50"),
    ]  # fmt: skip
    assert await balance(bus, user, "RUB") == "0.00"


async def test_paid_from_the_balance_while_the_card_payment_was_in_flight_keeps_the_money(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, _ = stripe_fake
    user = new_user()
    invoice = await an_invoice(bus, user, "20.00", "USD")
    card = await bus.call(PAY, pay(user, invoice["id"], "stripe"))
    assert card["ok"], card
    card_intent = stripe_intent(fake, card["data"]["payment"]["id"])
    funds = await bus.call("billing.wallet.deposit", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "stripe",
        "amount": {"amount": "20.00", "currency": "USD"},
    })  # fmt: skip
    funding = stripe_intent(fake, funds["data"]["transaction"]["id"])
    await relay.stripe(fake.event("payment_intent.succeeded", fake.succeed(funding["id"])))
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == funding["metadata"][
        "transaction_id"])  # fmt: skip
    by_balance = await bus.call(PAY, pay(user, invoice["id"], "balance"))
    assert by_balance["data"]["status"] == "paid", by_balance

    succeeded = copy.deepcopy(fake.succeed(card_intent["id"]))
    webhook = fake.event("payment_intent.succeeded", succeeded)
    assert (await relay.stripe(webhook)).status_code == 200
    assert (await relay.stripe(webhook)).status_code == 200

    card_id = card["data"]["payment"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == card_id)
    assert await balance(bus, user, "USD") == "20.00"  # the card's money: on the balance
    assert await ledger(bus, user) == [
        ("deposit", "completed", "20.00"), ("deposit", "completed", "20.00"),
        ("invoice_payment", "completed", "20.00"),
    ]  # fmt: skip
    assert len(bus.events_of("invoice.paid", lambda d: d["user_id"] == user)) == 1
