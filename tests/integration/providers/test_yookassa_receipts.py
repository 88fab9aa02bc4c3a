"""YooKassa receipts (54-FZ) through the real SDK against the fake of a shop that requires
them: deposits, a subscription's first charge and its renewal carry the exact receipt; no
contact is `invalid_message` with nothing sent; receipts off send none."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from billing_contracts.client import BillingClient, InvalidMessage
from billing_contracts.money import Money
from billing_worker.app import Worker, build_worker
from billing_worker.db.wallet import SqlWallet
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.clock import ManualClock
from support.relay import Relay
from support.rpc import Bus
from support.settings import provider_settings

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the renewal scheduler renews every due subscription."""
    return fresh_database_url


@pytest.fixture
def receipts() -> bool:
    """Receipts on, at a shop that requires them (a test parametrizes it off)."""
    return True


@pytest.fixture
def settings(
    database_url: str,
    rabbitmq_url: str,
    stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
    receipts: bool,
    settings_admin: bool,
) -> Settings:
    yookassa_fake[0].requires_receipts = receipts
    return provider_settings(
        database_url, rabbitmq_url, stripe_fake[1], yookassa_fake[1],
        yookassa_receipts=receipts, yookassa_vat_code=1,
        yookassa_deposit_description="Пополнение баланса",
        credit_without_policy=settings_admin,
    )  # fmt: skip


@pytest.fixture
def settings_admin() -> bool:
    """Whether admin commands (billing.tax-rate.upsert) are open, as in local development."""
    return False


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def new_user() -> str:
    return f"rcpt-{uuid.uuid4().hex[:8]}"


def deposit(user: str, amount: str = "1500.50", **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "yookassa",
            "amount": {"amount": amount, "currency": "RUB"},
            "return_url": "https://shop.example/return", **extra}  # fmt: skip


def payments_of(fake: FakeYooKassa, user: str) -> list[dict[str, Any]]:
    return [p for p in fake.payments.values() if p["metadata"]["user_id"] == user]


def posts_of(fake: FakeYooKassa, user: str) -> list[Any]:
    return [r for r in fake.requests_to("POST", "/v3/payments")
            if (r.json or {}).get("metadata", {}).get("user_id") == user]  # fmt: skip


def item(description: str, value: str, vat_code: int) -> dict[str, Any]:
    return {"description": description, "quantity": "1.00",
            "amount": {"value": value, "currency": "RUB"}, "vat_code": vat_code,
            "payment_subject": "service", "payment_mode": "full_payment"}  # fmt: skip


async def test_a_deposit_carries_its_exact_receipt_and_completes(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str], database_url: str
) -> None:
    fake, _ = yookassa_fake
    user = new_user()

    reply = await bus.call(DEPOSIT, deposit(user, customer_email="ada@example.com"))

    assert reply["ok"], reply
    [payment] = payments_of(fake, user)
    assert fake.receipts[payment["id"]] == {
        "customer": {"email": "ada@example.com"},
        "items": [item("Пополнение баланса", "1500.50", 1)],
    }
    # kept with the payment, where its refunds find the items they give back
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        kept = await SqlWallet(connection).metadata(uuid.UUID(reply["data"]["transaction"]["id"]))
    finally:
        await connection.close()
    assert kept == {"receipt": fake.receipts[payment["id"]]}
    fake.pay(payment["id"])
    answer = await relay.yookassa(fake.notification("payment.succeeded", payment["id"]))
    assert answer.status_code == 200
    done = await bus.event("deposit.completed", lambda d: d["user_id"] == user)
    assert done["data"]["amount"] == {"amount": "1500.50", "currency": "RUB"}


async def test_without_a_contact_the_deposit_is_invalid_message_and_nothing_is_sent(
    bus: Bus, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    command = deposit(user)

    reply = await bus.call(DEPOSIT, command)
    again = await bus.call(DEPOSIT, command)

    assert reply["error"]["code"] == "invalid_message"
    assert "customer_email or customer_phone" in reply["error"]["message"]
    assert again == reply  # recorded under its key like any refusal
    assert posts_of(fake, user) == []
    history = await bus.call("billing.wallet.transactions", {"user_id": user})
    assert history["data"]["items"] == []


async def test_a_subscription_charge_and_its_renewal_carry_the_plans_receipt(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    fake, _ = yookassa_fake
    user, code = new_user(), f"plan-{uuid.uuid4().hex[:8]}"
    upserted = await bus.call("billing.plan.upsert", {
        "idempotency_key": uuid.uuid4().hex, "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "499.00", "currency": "RUB"}, "vat_code": 2})  # fmt: skip
    assert upserted["data"]["vat_code"] == 2
    created = await bus.call("billing.subscription.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "email": "sub@example.com",
        "plan_code": code, "payment_source": "yookassa",
        "return_url": "https://shop.example/back"})  # fmt: skip
    assert created["ok"], created
    sub_id = created["data"]["subscription"]["id"]
    [first] = payments_of(fake, user)
    fake.pay(first["id"])
    await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    got = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})

    clock.set(datetime.fromisoformat(got["data"]["current_period_end"]))
    assert (await worker.renewals.run_once())["charged"] == 1

    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)
    charges = payments_of(fake, user)
    assert len(charges) == 2
    expected = {"customer": {"email": "sub@example.com"}, "items": [item("Pro", "499.00", 2)]}
    assert [fake.receipts[p["id"]] for p in charges] == [expected, expected]


@pytest.mark.parametrize("settings_admin", [True])
async def test_seats_are_one_item_of_their_quantity_at_the_taxed_unit_price(
    bus: Bus, relay: Relay, worker: Worker, clock: ManualClock, rabbitmq_url: str,
    yookassa_fake: tuple[FakeYooKassa, str],
) -> None:  # fmt: skip
    """3 seats of 499.00 taxed 20 % on top: one item "3.00" x 598.80 (1,796.40 in all), on
    the first charge and on the renewal; not 3 items, nor one of 1,796.40 at quantity 1."""
    fake, _ = yookassa_fake
    user, code, rate = new_user(), f"plan-{uuid.uuid4().hex[:8]}", f"vat-{uuid.uuid4().hex[:6]}"
    async with BillingClient(rabbitmq_url, timeout=30) as admin:  # names its AMQP user_id
        await admin.upsert_tax_rate(code=rate, name="VAT 20", percent="20", inclusive=False,
                                    idempotency_key=uuid.uuid4().hex)  # fmt: skip
    assert (await bus.call("billing.plan.upsert", {
        "idempotency_key": uuid.uuid4().hex, "code": code, "name": "Team", "interval": "month",
        "price": {"amount": "499.00", "currency": "RUB"}, "vat_code": 2, "tax_rate": rate,
    }))["ok"]  # fmt: skip
    created = await bus.call("billing.subscription.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "email": "seats@example.com",
        "plan_code": code, "payment_source": "yookassa", "quantity": 3,
        "return_url": "https://shop.example/back"})  # fmt: skip
    assert created["ok"], created
    sub_id = created["data"]["subscription"]["id"]
    [first] = payments_of(fake, user)
    assert first["amount"] == {"value": "1796.40", "currency": "RUB"}
    fake.pay(first["id"])
    await relay.yookassa(fake.notification("payment.succeeded", first["id"]))
    await bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    got = await bus.call("billing.subscription.get", {"user_id": user, "subscription_id": sub_id})
    clock.set(datetime.fromisoformat(got["data"]["current_period_end"]))
    assert (await worker.renewals.run_once())["charged"] == 1
    await bus.event("subscription.renewed", lambda d: d["subscription_id"] == sub_id)

    seats = {**item("Team", "598.80", 2), "quantity": "3.00"}
    expected = {"customer": {"email": "seats@example.com"}, "items": [seats]}
    assert [fake.receipts[p["id"]] for p in payments_of(fake, user)] == [expected, expected]


@pytest.mark.parametrize("receipts", [False])
async def test_with_receipts_off_no_receipt_is_sent(
    bus: Bus, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()

    reply = await bus.call(DEPOSIT, deposit(user))

    assert reply["ok"], reply
    [request] = posts_of(fake, user)
    assert "receipt" not in request.json
    assert fake.receipts == {}


@pytest.mark.parametrize("receipts", [False])
async def test_a_shop_requiring_receipts_refuses_a_payment_without_one(
    bus: Bus, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    """What receipts are for: the fake, like YooKassa, refuses the payment (400, receipt)."""
    fake, _ = yookassa_fake
    fake.requires_receipts = True
    user = new_user()

    reply = await bus.call(DEPOSIT, deposit(user, customer_email="ada@example.com"))

    assert reply["error"]["code"] == "provider_error"
    assert "Receipt is missing" in reply["error"]["message"]
    assert payments_of(fake, user) == []


async def test_the_typed_client_passes_the_contact_and_refusal_is_invalid_message(
    worker: Worker, rabbitmq_url: str, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    async with BillingClient(rabbitmq_url, timeout=30) as billing:
        done = await billing.deposit(
            user_id=user, amount=Money(amount="10.00", currency="RUB"), provider="yookassa",
            idempotency_key=uuid.uuid4().hex, return_url="https://shop.example/return",
            customer_phone="79001234567",
        )  # fmt: skip
        with pytest.raises(InvalidMessage):
            await billing.deposit(
                user_id=new_user(), amount=Money(amount="10.00", currency="RUB"),
                provider="yookassa", idempotency_key=uuid.uuid4().hex,
                return_url="https://shop.example/return",
            )  # fmt: skip
    [payment] = payments_of(fake, user)
    assert done.transaction.id == uuid.UUID(payment["metadata"]["transaction_id"])
    assert fake.receipts[payment["id"]]["customer"] == {"phone": "79001234567"}


async def test_a_refund_by_command_carries_the_refunded_part_of_the_payments_receipt(
    bus: Bus, relay: Relay, yookassa_fake: tuple[FakeYooKassa, str]
) -> None:
    fake, _ = yookassa_fake
    user = new_user()
    paid = await bus.call(
        DEPOSIT, deposit(user, amount="1000.00", customer_email="ada@example.com")
    )
    assert paid["ok"], paid
    [payment] = payments_of(fake, user)
    fake.pay(payment["id"])
    assert (
        await relay.yookassa(fake.notification("payment.succeeded", payment["id"]))
    ).status_code == 200
    await bus.event("deposit.completed", lambda d: d["user_id"] == user)

    refunded = await bus.call("billing.payment.refund", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user,
        "transaction_id": paid["data"]["transaction"]["id"],
        "amount": {"amount": "250.00", "currency": "RUB"}, "destination": "original",
    })  # fmt: skip

    assert refunded["ok"], refunded
    [refund] = [r for r in fake.refunds.values() if r["payment_id"] == payment["id"]]
    # the shop requires receipts: the fake refused a refund without one, and kept this one
    assert fake.receipts[refund["id"]] == {
        "customer": {"email": "ada@example.com"},
        "items": [item("Пополнение баланса", "250.00", 1)],
    }
