"""`billing.payment.refund` end to end: through the worker, the real SDKs and the HTTP
fakes of Stripe and YooKassa (and the sandbox), on the real PostgreSQL and RabbitMQ; the
audit is clean at the end of each test (each test has a database of its own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.refund_shop import CURRENCY, Shop, assert_audit_clean, count, new_user, wait_for
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

PROVIDERS = ["stripe", "yookassa", "sandbox"]


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Each test its own database: the audit and the reconciler see only its rows."""
    return fresh_database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    yield connection
    await connection.close()


@pytest.fixture
def shop(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Shop:  # fmt: skip
    return Shop(bus, relay, stripe_fake, yookassa_fake)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_three_partial_refunds_to_the_card_add_up_and_more_is_refused(
    shop: Shop, db: asyncpg.Connection, provider: str
) -> None:
    user, currency = new_user(), CURRENCY[provider]
    payment = await shop.deposit(provider, user, "30.00")
    for amount, total in (("10.00", "10.00"), ("5.00", "15.00"), ("15.00", "30.00")):
        reply = await shop.refund(user, payment, amount, currency=currency)
        assert reply["ok"], reply
        assert (reply["data"]["refund"]["status"], reply["data"]["refunded_total"]["amount"]) == (
            "completed", total,
        )  # fmt: skip
        assert reply["data"]["refund"]["refund_of"] == payment
    assert reply["data"]["payment"]["status"] == "refunded"
    calls = shop.refund_calls(provider)
    more = await shop.refund(user, payment, "0.01", currency=currency)
    assert more["error"]["code"] == "invalid_state", more
    assert shop.refund_calls(provider) == calls  # refused before the provider is asked
    assert await shop.balance(user, currency) == "0.00"
    if provider != "sandbox":
        assert shop.provider_refunded(provider, payment) in (3000, "30.00")
    await wait_for(lambda: count(shop, "payment.refunded", payment, 3))
    await assert_audit_clean(db)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_full_refund_by_default_and_one_larger_than_what_is_left(
    shop: Shop, db: asyncpg.Connection, provider: str
) -> None:
    user, currency = new_user(), CURRENCY[provider]
    payment = await shop.deposit(provider, user, "20.00")
    first = await shop.refund(user, payment, "8.00", currency=currency)
    assert first["ok"], first
    too_much = await shop.refund(user, payment, "12.01", currency=currency)
    assert too_much["error"]["code"] == "invalid_state"
    assert too_much["error"]["details"]["refundable"]["amount"] == "12.00"
    rest = await shop.refund(user, payment)  # no amount: all that is left
    assert rest["data"]["refund"]["amount"] == {"amount": "12.00", "currency": currency}
    assert rest["data"]["payment"]["status"] == "refunded"
    assert await shop.balance(user, currency) == "0.00"
    await assert_audit_clean(db)


@pytest.mark.parametrize("provider", ["stripe", "yookassa"])
async def test_a_deposit_spent_is_refused_and_nothing_is_sent_to_the_provider(
    shop: Shop, db: asyncpg.Connection, provider: str
) -> None:
    user, currency = new_user(), CURRENCY[provider]
    payment = await shop.deposit(provider, user, "20.00")
    spent = await shop.bus.call("billing.wallet.withdraw", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "spent",
        "amount": {"amount": "15.00", "currency": currency}})  # fmt: skip
    assert spent["ok"], spent
    refused = await shop.refund(user, payment)
    assert refused["error"]["code"] == "insufficient_funds", refused
    assert shop.refund_calls(provider) == 0
    assert await shop.balance(user, currency) == "5.00"
    partial = await shop.refund(user, payment, "5.00", currency=currency)  # what is left is
    assert partial["ok"], partial
    await assert_audit_clean(db)


@pytest.mark.parametrize("provider", ["stripe", "sandbox"])
async def test_fifty_concurrent_refunds_of_one_payment_never_exceed_it(
    shop: Shop, db: asyncpg.Connection, provider: str
) -> None:
    user = new_user()
    payment = await shop.deposit(provider, user, "50.00")
    replies = await asyncio.gather(*(shop.refund(user, payment, "1.50") for _ in range(50)))
    accepted = [r for r in replies if r.get("ok")]
    refused = [r for r in replies if not r.get("ok")]
    assert len(accepted) == 33  # 33 x 1.50 = 49.50 of 50.00
    assert {r["error"]["code"] for r in refused} == {"invalid_state"}
    assert await shop.balance(user, "USD") == "0.50"
    if provider == "stripe":
        assert shop.provider_refunded(provider, payment) == 4950
        assert shop.refund_calls(provider) == 33
    total = await db.fetchval(
        "SELECT sum(amount_minor) FROM transactions WHERE refund_of = $1 AND status = 'completed'",
        uuid.UUID(payment),
    )
    assert total == 4950
    await assert_audit_clean(db)


async def test_another_users_payment_is_not_found_and_unfinished_payments_are_refused(
    shop: Shop, db: asyncpg.Connection
) -> None:
    owner, attacker = new_user(), new_user()
    payment = await shop.deposit("sandbox", owner, "20.00")
    theirs = await shop.refund(attacker, payment)
    missing = await shop.refund(attacker, str(uuid.uuid4()))
    assert theirs["error"]["code"] == missing["error"]["code"] == "not_found"
    assert set(theirs["error"]["details"]) == set(missing["error"]["details"])
    pending = await shop.bus.call("billing.wallet.deposit", {
        "idempotency_key": uuid.uuid4().hex, "user_id": owner, "provider": "stripe",
        "amount": {"amount": "5.00", "currency": "USD"}})  # fmt: skip
    unfinished = await shop.refund(owner, pending["data"]["transaction"]["id"])
    assert unfinished["error"]["code"] == "invalid_state"
    to_balance = await shop.refund(owner, payment, destination="balance")
    assert to_balance["error"]["code"] == "invalid_state"  # a deposit is on the balance already
    assert shop.refund_calls("stripe") == 0
    assert await shop.balance(owner, "USD") == "20.00"
    await assert_audit_clean(db)


@pytest.mark.parametrize("amount", ["0.00", "-5.00"])
async def test_a_zero_or_negative_amount_is_an_invalid_message(
    shop: Shop, db: asyncpg.Connection, amount: str
) -> None:
    user = new_user()
    payment = await shop.deposit("sandbox", user, "20.00")
    reply = await shop.refund(user, payment, amount)
    assert reply["error"]["code"] == "invalid_message"
    assert await shop.balance(user, "USD") == "20.00"


async def test_an_invoice_paid_from_the_balance_is_refunded_to_the_balance(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user = new_user()
    await shop.deposit("sandbox", user, "20.00")
    invoice = await shop.bus.call("billing.invoice.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "currency": "USD",
        "lines": [{"description": "Sticker", "quantity": 2,
                   "unit_price": {"amount": "4.00", "currency": "USD"}}]})  # fmt: skip
    paid = await shop.bus.call("billing.invoice.pay", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user,
        "invoice_id": invoice["data"]["id"], "source": "balance"})  # fmt: skip
    assert paid["ok"], paid
    assert await shop.balance(user, "USD") == "12.00"
    [charge_id] = await db.fetch(
        "SELECT id FROM transactions WHERE kind = 'invoice_payment' AND user_id = $1", user
    )
    reply = await shop.refund(user, str(charge_id["id"]), "3.00")  # destination original
    assert (reply["data"]["destination"], reply["data"]["refund"]["provider"]) == (
        "balance", "balance",
    )  # fmt: skip
    rest = await shop.refund(user, str(charge_id["id"]), destination="balance")
    assert rest["data"]["payment"]["status"] == "refunded"
    assert await shop.balance(user, "USD") == "20.00"
    await assert_audit_clean(db)


async def test_a_yookassa_subscription_charge_refunded_to_the_balance_and_to_the_card(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user, code = new_user(), f"plan-{uuid.uuid4().hex[:8]}"
    upsert = await shop.bus.call("billing.plan.upsert", {
        "idempotency_key": uuid.uuid4().hex, "code": code, "name": "Pro", "interval": "month",
        "price": {"amount": "499.00", "currency": "RUB"}})  # fmt: skip
    assert upsert["ok"], upsert
    created = await shop.bus.call("billing.subscription.create", {
        "idempotency_key": uuid.uuid4().hex, "user_id": user, "plan_code": code,
        "payment_source": "yookassa", "return_url": "https://shop.example/back"})  # fmt: skip
    assert created["ok"], created
    [first] = [p for p in shop.yookassa.payments.values() if p["metadata"]["user_id"] == user]
    shop.yookassa.pay(first["id"])
    await shop.relay.yookassa(shop.yookassa.notification("payment.succeeded", first["id"]))
    sub_id = created["data"]["subscription"]["id"]
    await shop.bus.event("subscription.created", lambda d: d["subscription_id"] == sub_id)
    charge = str(await db.fetchval(
        "SELECT id FROM transactions WHERE kind = 'subscription_charge' AND user_id = $1", user
    ))  # fmt: skip

    to_balance = await shop.refund(user, charge, "100.00", destination="balance", currency="RUB")
    assert (to_balance["data"]["destination"], to_balance["data"]["refund"]["provider"]) == (
        "balance", "balance",
    )  # fmt: skip
    assert shop.refund_calls("yookassa") == 0
    assert await shop.balance(user, "RUB") == "100.00"
    to_card = await shop.refund(user, charge)  # the rest, to the card
    assert to_card["data"]["refund"]["amount"] == {"amount": "399.00", "currency": "RUB"}
    assert to_card["data"]["payment"]["status"] == "refunded"
    assert shop.provider_refunded("yookassa", first["id"]) == "399.00"
    assert await shop.balance(user, "RUB") == "100.00"
    await assert_audit_clean(db)


async def test_a_refund_call_that_timed_out_at_stripe_is_retried_into_one_refund(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user = new_user()
    payment = await shop.deposit("stripe", user, "20.00")
    shop.stripe.delay_seconds = 1.5  # made at Stripe, its answer too late for the worker

    async def made() -> bool:  # the retry, with the same idempotency key, is on its way
        return shop.refund_calls("stripe") >= 2

    async def heal() -> None:
        await wait_for(made)
        shop.stripe.delay_seconds = 0

    healing = asyncio.create_task(heal())
    reply = await shop.refund(user, payment, "7.00")
    await healing
    assert reply["data"]["refund"]["status"] == "completed", reply
    assert len(shop.stripe.refunds) == 1
    assert shop.provider_refunded("stripe", payment) == 700
    assert await shop.balance(user, "USD") == "13.00"
    await assert_audit_clean(db)
