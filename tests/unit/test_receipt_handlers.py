"""Which YooKassa payments carry a receipt, for whom, and what happens without a contact,
on the fake unit of work (handlers/receipts.py, wallet.py, yookassa_subscriptions.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription
from billing_contracts.wallet import Deposit
from billing_worker.db.intents import Intent
from billing_worker.domain.errors import InvalidInput
from billing_worker.handlers import (
    receipts,
    renewals,
    subscriptions,
    wallet,
    yookassa_subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult, PaymentStatus
from billing_worker.providers.yookassa.receipts import ReceiptPolicy
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, money, new_user, run
from support.provider_kit import CannedGateway

POLICY = ReceiptPolicy(vat_code=6, deposit_description="Top-up")


class AskedYooKassa(CannedGateway):
    """YooKassa saving the card and succeeding at once; it keeps what it was asked."""

    trusts_method_ids = True

    def __init__(self) -> None:
        super().__init__("yookassa")
        self.requests: list[PaymentRequest] = []

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.requests.append(request)
        return PaymentResult(
            f"yk_{request.transaction_id.hex[:12]}", PaymentStatus.SUCCEEDED,
            saved_method_ref="pm_saved", amount_minor=request.amount_minor,
            currency=request.currency, transaction_ref=str(request.transaction_id),
            confirmation={"status": "succeeded"},
        )  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def yookassa() -> AskedYooKassa:
    return AskedYooKassa()


def deps_of(gateway: AskedYooKassa, receipts: ReceiptPolicy | None = POLICY) -> Deps:
    gateways = Gateways({"yookassa": gateway, "sandbox": CannedGateway()}, "yookassa")
    return Deps(gateways, Decimal("10"), receipts=receipts)


def a_deposit(user: str, **extra: Any) -> Deposit:
    return Deposit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money("1500.50", "RUB"),
         "provider": "yookassa", "return_url": "https://shop.example/back", **extra}
    )  # fmt: skip


async def test_a_deposit_sends_the_receipt_of_its_amount_to_the_commands_email(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    deps = deps_of(yookassa)
    command = a_deposit(new_user(), customer_email="a@b.example")
    intent = await run(db, wallet.deposit, command, deps)
    await wallet.call_deposit(intent, deps)

    [asked] = yookassa.requests
    expected = {
        "customer": {"email": "a@b.example"},
        "items": [{"description": "Top-up", "quantity": "1.00",
                   "amount": {"value": "1500.50", "currency": "RUB"}, "vat_code": 6,
                   "payment_subject": "service", "payment_mode": "full_payment"}],
    }  # fmt: skip
    assert asked.receipt == expected
    # kept with the payment, for its refunds
    assert json.loads(db.state.metadata[intent.id]) == {"receipt": expected}


async def test_a_phone_serves_and_the_stored_email_is_the_fallback(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    deps = deps_of(yookassa)
    by_phone = await run(db, wallet.deposit, a_deposit(new_user(), customer_phone="79001234567"),
                         deps)  # fmt: skip
    assert by_phone.request["receipt"]["customer"] == {"phone": "79001234567"}
    user = new_user()
    async with db.transaction() as uow:
        await uow.subscriptions.ensure_user(user, "stored@b.example")
    stored = await run(db, wallet.deposit, a_deposit(user), deps)
    assert stored.request["receipt"]["customer"] == {"email": "stored@b.example"}


async def test_no_contact_is_invalid_message_and_nothing_is_written(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    user = new_user()
    with pytest.raises(InvalidInput, match="customer_email or customer_phone") as refused:
        await run(db, wallet.deposit, a_deposit(user), deps_of(yookassa))
    assert refused.value.code == "invalid_message"
    assert (db.state.transactions, db.state.intents, yookassa.requests) == ({}, {}, [])


async def test_receipts_off_or_another_provider_send_none(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    off = await run(db, wallet.deposit, a_deposit(new_user()), deps_of(yookassa, None))
    await wallet.call_deposit(off, deps_of(yookassa, None))
    assert "receipt" not in off.request
    assert yookassa.requests[0].receipt is None
    sandbox = a_deposit(new_user()).model_copy(update={"provider": "sandbox"})
    other = await run(db, wallet.deposit, sandbox, deps_of(yookassa))  # no contact: no matter
    assert "receipt" not in other.request


async def plan(db: FakeDatabase, deps: Deps, vat_code: int | None) -> None:
    command = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro monthly", "interval": "month",
         "price": money("499.00", "RUB"), "vat_code": vat_code}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, command, deps)


async def subscribe(db: FakeDatabase, deps: Deps, user: str, email: str | None) -> Intent:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, email=email, plan_code="pro",
        payment_source="yookassa", return_url="https://shop.example/back",
    )  # fmt: skip
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    return intent


async def test_subscription_charges_and_renewals_carry_the_plans_receipt(
    db: FakeDatabase, clock: ManualClock, yookassa: AskedYooKassa
) -> None:
    deps = deps_of(yookassa)
    await plan(db, deps, vat_code=2)
    first = await subscribe(db, deps, new_user(), "sub@b.example")
    result = await yookassa_subscriptions.call_charge(first, deps)
    async with db.transaction() as uow:
        await yookassa_subscriptions.finish_create(first, result, uow, deps)
    clock.advance(days=32)  # past the first period's end
    renewal = await run(db, renewals.renew_next, [], deps)
    assert isinstance(renewal, Intent)
    await yookassa_subscriptions.call_charge(renewal, deps)

    item = {"description": "Pro monthly", "quantity": "1.00",
            "amount": {"value": "499.00", "currency": "RUB"}, "vat_code": 2,
            "payment_subject": "service", "payment_mode": "full_payment"}  # fmt: skip
    assert [r.receipt for r in yookassa.requests] == [
        {"customer": {"email": "sub@b.example"}, "items": [item]}
    ] * 2


async def test_a_subscription_without_any_email_is_refused_before_anything_is_written(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    deps = deps_of(yookassa)
    await plan(db, deps, vat_code=None)
    with pytest.raises(InvalidInput):
        await subscribe(db, deps, new_user(), None)
    assert (db.state.subscriptions, db.state.transactions, db.state.intents) == ({}, {}, {})


async def test_a_renewal_with_nowhere_to_send_the_receipt_fails_without_asking_yookassa(
    db: FakeDatabase, clock: ManualClock, yookassa: AskedYooKassa
) -> None:
    """Receipts turned on after a subscription was made without an e-mail: YooKassa would
    refuse the charge, so it is not asked; the period fails into dunning with the reason."""
    off = deps_of(yookassa, None)
    await plan(db, off, vat_code=None)
    first = await subscribe(db, off, new_user(), None)
    result = await yookassa_subscriptions.call_charge(first, off)
    async with db.transaction() as uow:
        await yookassa_subscriptions.finish_create(first, result, uow, off)
    clock.advance(days=32)

    assert await run(db, renewals.renew_next, [], deps_of(yookassa)) is not None
    assert len(yookassa.requests) == 1  # the first period only
    assert first.subscription_id is not None
    sub = db.state.subscriptions[first.subscription_id]
    assert sub.status == "past_due"
    [failed] = [e for e in db.events if e.type == "subscription.past_due"]
    assert failed.data["reason"] == "no_receipt_contact"


async def test_a_yookassa_trial_without_any_email_is_refused_too(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    """Its first charge comes when the trial ends: a receipt must be possible then."""
    deps = deps_of(yookassa)
    command = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "interval": "month",
         "price": money("499.00", "RUB"), "trial_days": 7}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, command, deps)
    with pytest.raises(InvalidInput):
        await run(db, subscriptions.create_subscription, CreateSubscription(
            idempotency_key=key(), user_id=new_user(), plan_code="pro",
            payment_source="yookassa"), deps)  # fmt: skip
    assert db.state.subscriptions == {}
    made = await run(db, subscriptions.create_subscription, CreateSubscription(
        idempotency_key=key(), user_id=new_user(), email="t@b.example", plan_code="pro",
        payment_source="yookassa"), deps)  # fmt: skip
    assert not isinstance(made, Intent)
    assert made.subscription.status == "trialing"


async def test_a_refund_gets_the_refunded_part_of_the_receipt_its_payment_carried(
    db: FakeDatabase, yookassa: AskedYooKassa
) -> None:
    deps = deps_of(yookassa)
    intent = await run(db, wallet.deposit, a_deposit(new_user(), customer_email="a@b.example"),
                       deps)  # fmt: skip
    payment = db.state.transactions[intent.id]
    async with db.transaction() as uow:
        part = await receipts.for_refund(payment, 50025, uow, deps)
        whole = await receipts.for_refund(payment, 150050, uow, deps)
        off = await receipts.for_refund(payment, 50025, uow, deps_of(yookassa, None))
    assert part is not None
    assert whole == intent.request["receipt"]
    assert part["customer"] == {"email": "a@b.example"}
    assert [(i["description"], i["amount"]["value"]) for i in part["items"]] == [
        ("Top-up", "500.25")
    ]
    assert off is None
