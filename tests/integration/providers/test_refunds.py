"""`billing.payment.refund` end to end: through the worker, the real SDKs and the HTTP
fakes of Stripe and YooKassa (and the sandbox), on the real PostgreSQL and RabbitMQ; the
audit is clean at the end of each test (each test has a database of its own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from billing_worker.app import Worker
from billing_worker.jobs.reconcile_refunds import reconcile_refunds
from billing_worker.ops.audit import audit
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.attacker import stripe_refund, yookassa_refund
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration

REFUND = "billing.payment.refund"
CURRENCY = {"stripe": "USD", "yookassa": "RUB", "sandbox": "USD"}
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


class Shop:
    """Payments and refunds of one test, through the bus, the relay and the fakes."""

    def __init__(self, bus: Bus, relay: Relay, stripe: tuple[FakeStripe, str],
                 yookassa: tuple[FakeYooKassa, str]) -> None:  # fmt: skip
        self.bus, self.relay = bus, relay
        (self.stripe, self.stripe_base), (self.yookassa, self.yookassa_base) = stripe, yookassa

    async def deposit(self, provider: str, user: str, amount: str) -> str:
        """A completed deposit; its transaction id."""
        body = {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": provider,
                "amount": {"amount": amount, "currency": CURRENCY[provider]},
                "return_url": "https://shop.example/return"}  # fmt: skip
        reply = await self.bus.call("billing.wallet.deposit", body)
        assert reply["ok"], reply
        transaction_id = str(reply["data"]["transaction"]["id"])
        if provider == "stripe":
            [pi] = [p for p in self.stripe.payment_intents.values()
                    if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            done = self.stripe.succeed(pi["id"])
            await self.relay.stripe(self.stripe.event("payment_intent.succeeded", done))
        elif provider == "yookassa":
            [payment_id] = [pid for pid, p in self.yookassa.payments.items()
                            if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            self.yookassa.pay(payment_id)
            await self.relay.yookassa(self.yookassa.notification("payment.succeeded", payment_id))
        await self.bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
        return transaction_id

    async def refund(
        self, user: str, transaction_id: str, amount: str | None = None,
        destination: str = "original", currency: str = "USD",
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "idempotency_key": uuid.uuid4().hex,
            "user_id": user,
            "transaction_id": transaction_id,
            "destination": destination,
        }
        if amount is not None:
            body["amount"] = {"amount": amount, "currency": currency}
        return await self.bus.call(REFUND, body, timeout=30)

    async def balance(self, user: str, currency: str) -> str:
        reply = await self.bus.call(
            "billing.wallet.balance", {"user_id": user, "currency": currency}
        )
        accounts = reply["data"]["accounts"]
        return str(accounts[0]["balance"]["amount"]) if accounts else "none"

    def refund_calls(self, provider: str) -> int:
        if provider == "stripe":
            return len(self.stripe.calls("POST", "/v1/refunds"))
        if provider == "yookassa":
            return len(self.yookassa.requests_to("POST", "/v3/refunds"))
        return 0

    def provider_refunded(self, provider: str, transaction_id: str) -> int | str:
        """What the provider itself says is refunded of the payment."""
        if provider == "stripe":
            [pi] = [p for p in self.stripe.payment_intents.values()
                    if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            return int(self.stripe.charges[pi["latest_charge"]]["amount_refunded"])
        [payment] = [p for p in self.yookassa.payments.values()
                     if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
        return str(payment.get("refunded_amount", {}).get("value", "0"))


@pytest.fixture
def shop(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Shop:  # fmt: skip
    return Shop(bus, relay, stripe_fake, yookassa_fake)


def new_user() -> str:
    return f"refund-user-{uuid.uuid4().hex[:8]}"


async def assert_audit_clean(db: asyncpg.Connection) -> None:
    findings = await audit(db)
    assert not findings, "\n".join(f"{f.check}: {f.rows[:5]}" for f in findings)


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    """Until `check()` (a coroutine function) is true, with a deadline."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


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
    events = shop.bus.events_of("payment.refunded", lambda d: d["transaction_id"] == payment)
    await wait_for(lambda: _count(shop, "payment.refunded", payment, 3))
    await assert_audit_clean(db)
    assert len(events) <= 3


async def _count(shop: Shop, type_: str, payment: str, n: int) -> bool:
    return len(shop.bus.events_of(type_, lambda d: d["transaction_id"] == payment)) == n


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


async def test_a_stripe_refund_webhook_after_a_command_refund_and_a_dashboard_refund(
    shop: Shop, db: asyncpg.Connection
) -> None:
    """Stripe's `charge.refunded` tells the running total: the command's refund is in it
    and not recorded again; a dashboard refund after it is recorded once."""
    user = new_user()
    payment = await shop.deposit("stripe", user, "25.00")
    assert (await shop.refund(user, payment, "10.00"))["ok"]
    [pi] = [p for p in shop.stripe.payment_intents.values()
            if p["metadata"]["transaction_id"] == payment]  # fmt: skip
    charge = shop.stripe.charges[pi["latest_charge"]]
    assert (
        await shop.relay.stripe(shop.stripe.event("charge.refunded", charge))
    ).status_code == 200
    await stripe_refund(shop.stripe_base, pi["id"], 500)  # in the dashboard
    charge = shop.stripe.charges[pi["latest_charge"]]
    for _ in range(2):  # the same total told twice
        told = shop.stripe.event("charge.refunded", charge)
        assert (await shop.relay.stripe(told)).status_code == 200
    await wait_for(lambda: _count(shop, "payment.refunded", payment, 2))
    rows = await db.fetch(
        "SELECT amount_minor, provider_ref FROM transactions WHERE refund_of = $1 "
        "ORDER BY amount_minor",
        uuid.UUID(payment),
    )
    assert [r["amount_minor"] for r in rows] == [500, 1000]
    assert await shop.balance(user, "USD") == "10.00"
    await assert_audit_clean(db)


async def test_a_yookassa_refund_notification_of_a_command_refund_and_a_dashboard_refund(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user = new_user()
    payment = await shop.deposit("yookassa", user, "100.00")
    reply = await shop.refund(user, payment, "40.00", currency="RUB")
    assert reply["ok"], reply
    [ours] = list(shop.yookassa.refunds)
    assert (await shop.relay.yookassa(shop.yookassa.refund_notification(ours))).status_code == 200
    [payment_id] = [pid for pid, p in shop.yookassa.payments.items()
                    if p["metadata"]["transaction_id"] == payment]  # fmt: skip
    dashboard = await yookassa_refund(shop.yookassa_base, payment_id, "25.00")
    for _ in range(2):
        told = shop.yookassa.refund_notification(dashboard["id"])
        assert (await shop.relay.yookassa(told)).status_code == 200
    await wait_for(lambda: _count(shop, "payment.refunded", payment, 2))
    refs = await db.fetch(
        "SELECT amount_minor, provider_ref FROM transactions WHERE refund_of = $1 "
        "ORDER BY amount_minor",
        uuid.UUID(payment),
    )
    assert [(r["amount_minor"], r["provider_ref"]) for r in refs] == [
        (2500, dashboard["id"]), (4000, ours),
    ]  # fmt: skip
    assert await shop.balance(user, "RUB") == "35.00"
    await assert_audit_clean(db)


@pytest.mark.parametrize("how", ["notification", "reconciler", "canceled"])
async def test_a_pending_yookassa_refund_completes_later_once(
    shop: Shop, db: asyncpg.Connection, worker: Worker, how: str
) -> None:
    user = new_user()
    payment = await shop.deposit("yookassa", user, "100.00")
    shop.yookassa.refund_status = "pending"
    reply = await shop.refund(user, payment, "30.00", currency="RUB")
    assert reply["data"]["refund"]["status"] == "processing", reply
    assert await shop.balance(user, "RUB") == "70.00"  # held while the refund is pending
    [ref] = list(shop.yookassa.refunds)
    shop.yookassa.settle_refund(ref, "canceled" if how == "canceled" else "succeeded")
    if how == "notification":
        assert (
            await shop.relay.yookassa(shop.yookassa.refund_notification(ref))
        ).status_code == 200
    else:
        r = worker.reconciler
        assert await reconcile_refunds(r.engine, r.service, r.gateways, 0, 10) == 1
    expected = ("failed", "100.00") if how == "canceled" else ("completed", "70.00")

    async def settled() -> bool:
        status = await db.fetchval("SELECT status FROM transactions WHERE refund_of = $1",
                                   uuid.UUID(payment))  # fmt: skip
        return (status, await shop.balance(user, "RUB")) == expected

    await wait_for(settled)
    if how != "canceled":
        await wait_for(lambda: _count(shop, "payment.refunded", payment, 1))
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
