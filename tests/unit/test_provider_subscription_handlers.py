"""YooKassa subscriptions (handlers/yookassa_subscriptions.py) on the fake unit of work:
the first period's payment, its callback, renewals with the saved method and dunning. A
canned gateway stands for YooKassa: no network."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.coupons import UpsertCoupon
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.domain.events import PaymentOutcome
from billing_worker.handlers import coupons, renewals, subscriptions, yookassa_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
from billing_worker.providers.base import PaymentRequest, PaymentResult, PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, money, new_user, run
from support.provider_kit import CannedGateway, canned_deps, deliver, payment_event


class CannedYooKassa(CannedGateway):
    """YooKassa answering each payment as the test set it; it keeps what it was asked."""

    trusts_method_ids = True

    def __init__(self) -> None:
        super().__init__("yookassa")
        self.status = PaymentStatus.SUCCEEDED
        self.saves: str | None = None  # the method YooKassa says it saved
        self.action: dict[str, Any] | None = None
        self.requests: list[PaymentRequest] = []

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.requests.append(request)
        failed = self.status is PaymentStatus.FAILED
        return PaymentResult(
            f"yk_{request.transaction_id.hex[:12]}", self.status, action=self.action,
            failure_code="card_expired" if failed else None, saved_method_ref=self.saves,
            amount_minor=request.amount_minor, currency=request.currency,
            transaction_ref=str(request.transaction_id), confirmation={"status": self.status},
        )  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def gateway() -> CannedYooKassa:
    return CannedYooKassa()


@pytest.fixture
async def deps(db: FakeDatabase, gateway: CannedYooKassa) -> Deps:
    deps = canned_deps(gateway)
    plan = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "pro", "name": "Pro", "price": money("10.00", "RUB"),
         "interval": "month"}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, plan, deps)
    return deps


async def begin(db: FakeDatabase, deps: Deps, user: str, method: str | None = None) -> Intent:
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="yookassa",
        payment_method_id=method, return_url="https://shop.example/back",
    )  # fmt: skip
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    return intent


async def first_period(db: FakeDatabase, deps: Deps, intent: Intent) -> SubscriptionCreated:
    result = await yookassa_subscriptions.call_charge(intent, deps)
    async with db.transaction() as uow:
        return await yookassa_subscriptions.finish_create(intent, result, uow, deps)


async def renewal(db: FakeDatabase, deps: Deps) -> str | Intent | None:
    """One round of the scheduler; a provider charge begun is asked and answered."""
    begun = await run(db, renewals.renew_next, [], deps)
    if isinstance(begun, Intent):
        result = await yookassa_subscriptions.call_charge(begun, deps)
        async with db.transaction() as uow:
            await yookassa_subscriptions.finish_renewal(begun, result, uow, deps)
    return begun


async def active(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, user: str
) -> SubscriptionRow:
    """A subscription whose first payment succeeded and saved the card pm_saved."""
    gateway.saves = "pm_saved"
    intent = await begin(db, deps, user)
    await first_period(db, deps, intent)
    gateway.saves = None
    assert intent.subscription_id is not None
    return db.state.subscriptions[intent.subscription_id]


def sub_of(db: FakeDatabase, intent: Intent) -> SubscriptionRow:
    assert intent.subscription_id is not None
    return db.state.subscriptions[intent.subscription_id]


async def test_phase_one_writes_an_incomplete_subscription_and_a_created_charge(
    db: FakeDatabase, deps: Deps
) -> None:
    intent = await begin(db, deps, new_user())
    sub, charge = sub_of(db, intent), db.state.transactions[intent.id]
    assert (sub.status, sub.paid_periods) == ("incomplete", 0)
    assert (charge.kind, charge.status, charge.amount_minor, charge.currency) == (
        "subscription_charge", "created", 1000, "RUB",
    )  # fmt: skip
    assert (charge.subscription_id, db.events) == (sub.id, [])


async def test_a_paid_first_period_activates_it_and_keeps_the_saved_card(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa
) -> None:
    user = new_user()
    gateway.saves = "pm_saved"
    intent = await begin(db, deps, user)
    created = await first_period(db, deps, intent)
    assert (created.subscription.status, created.payment_action) == ("active", None)
    sub = sub_of(db, intent)
    assert (sub.paid_periods, db.state.charges) == (1, {(sub.id, 0): intent.id})
    async with db.transaction() as uow:
        assert sub.payment_method_id == await uow.users.payment_method_of(
            user, "yookassa", "pm_saved"
        )
    assert db.state.transactions[intent.id].status == "completed"
    assert [e.type for e in db.events] == [
        ev.PAYMENT_SUCCESS, ev.PAYMENT_METHOD_SAVED, ev.INVOICE_CREATED, ev.INVOICE_PAID,
        ev.SUBSCRIPTION_CREATED,
    ]  # fmt: skip


async def test_a_declined_first_payment_expires_it_and_announces_no_subscription(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa
) -> None:
    gateway.status = PaymentStatus.FAILED
    intent = await begin(db, deps, new_user())
    created = await first_period(db, deps, intent)
    assert created.subscription.status == "incomplete_expired"
    assert sub_of(db, intent).cancel_reason == "card_expired"
    assert [e.type for e in db.events] == [ev.PAYMENT_FAILED]


async def test_a_first_payment_refused_outright_leaves_nothing(
    db: FakeDatabase, deps: Deps
) -> None:
    intent = await begin(db, deps, new_user())
    async with db.transaction() as uow:
        await yookassa_subscriptions.undo_create(intent, uow)
    assert (db.state.subscriptions, db.state.transactions) == ({}, {})


@pytest.mark.parametrize(
    ("outcome", "status", "events"),
    [
        (PaymentOutcome.SUCCEEDED, "active", [ev.SUBSCRIPTION_CREATED]),
        (PaymentOutcome.FAILED, "incomplete_expired", []),
    ],
)
async def test_a_redirected_first_payment_is_settled_by_its_callback(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa,
    outcome: PaymentOutcome, status: str, events: list[str],
) -> None:  # fmt: skip
    user = new_user()
    gateway.status, gateway.action = PaymentStatus.PENDING, {"type": "redirect", "url": "https://y"}
    intent = await begin(db, deps, user)
    created = await first_period(db, deps, intent)
    assert created.payment_action is not None
    assert (created.subscription.status, db.events) == ("incomplete", [])
    row = db.state.transactions[intent.id]
    event = payment_event(row, outcome, saved_method_ref="pm_cb")
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    assert await deliver(db, deps, gateway, event) == Applied.DUPLICATE
    sub = sub_of(db, intent)
    announced = [e.type for e in db.events if e.type.startswith("subscription.")]
    assert (sub.status, announced) == (status, events)
    # Settled by its callback, the charge is announced as a charge paid directly is:
    # payment.success (or payment.failed) before anything said of the subscription.
    payment = ev.PAYMENT_FAILED if outcome is PaymentOutcome.FAILED else ev.PAYMENT_SUCCESS
    assert [e.type for e in db.events if e.type.startswith("payment.")] == [payment]
    assert db.events[0].type == payment
    assert sub.paid_periods == (1 if status == "active" else 0)
    if status == "active":
        async with db.transaction() as uow:
            method = await uow.subscriptions.payment_method_id("yookassa", "pm_cb")
        assert method is not None
        assert sub.payment_method_id == method


async def test_only_a_method_saved_for_the_user_may_pay(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa
) -> None:
    owner = new_user()
    await active(db, deps, gateway, owner)
    asked = len(gateway.requests)
    for method in ("pm_saved", "pm_never_saved"):  # another user's card, or none at all
        with pytest.raises(NotFound):
            await begin(db, deps, new_user(), method)
    assert len(gateway.requests) == asked
    assert len(db.state.subscriptions) == 1


async def test_a_renewal_charges_the_saved_method_once_per_period(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    sub = await active(db, deps, gateway, new_user())
    assert await renewal(db, deps) is None  # nothing due yet
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    begun = await run(db, renewals.renew_next, [], deps)
    assert isinstance(begun, Intent)
    assert await run(db, renewals.renew_next, [], deps) is None  # its charge is in flight
    result = await yookassa_subscriptions.call_charge(begun, deps)
    request = gateway.requests[-1]
    assert (request.payment_method_id, request.idempotency_key, request.amount_minor) == (
        "pm_saved", str(begun.id), 1000,
    )  # fmt: skip
    async with db.transaction() as uow:
        await yookassa_subscriptions.finish_renewal(begun, result, uow, deps)
    with pytest.raises(InvalidState):  # the same answer again pays nothing more
        async with db.transaction() as uow:
            await yookassa_subscriptions.finish_renewal(begun, result, uow, deps)
    renewed = db.state.subscriptions[sub.id]
    assert (renewed.status, renewed.paid_periods) == ("active", 2)
    assert renewed.current_period_start == sub.current_period_end
    assert await run(db, renewals.renew_next, [], deps) is None  # paid: not due again
    assert len(gateway.requests) == 2
    assert len(db.events_of(ev.SUBSCRIPTION_RENEWED)) == 1


async def test_a_declined_renewal_duns_and_retries_with_a_new_charge(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    sub = await active(db, deps, gateway, new_user())
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    gateway.status = PaymentStatus.FAILED
    first = await renewal(db, deps)
    dunned = db.state.subscriptions[sub.id]
    assert (dunned.status, dunned.dunning_attempts) == ("past_due", 1)
    assert dunned.next_attempt_at == sub.current_period_end + timedelta(days=1)
    assert [e["reason"] for e in db.events_of(ev.SUBSCRIPTION_PAST_DUE)] == ["card_expired"]
    assert len(db.events_of(ev.PAYMENT_FAILED)) == 1  # the charge's own, not a second one
    clock.set(dunned.next_attempt_at)
    gateway.status = PaymentStatus.SUCCEEDED
    second = await renewal(db, deps)
    assert isinstance(first, Intent)
    assert isinstance(second, Intent)
    assert first.id != second.id  # another attempt, another idempotency key
    assert db.state.transactions[first.id].status == "failed"
    back = db.state.subscriptions[sub.id]
    assert (back.status, back.paid_periods, back.dunning_attempts) == ("active", 2, 0)


async def test_a_renewal_without_a_saved_method_fails_without_asking_yookassa(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    intent = await begin(db, deps, new_user())
    await first_period(db, deps, intent)  # paid, but YooKassa saved no card
    sub = sub_of(db, intent)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    assert await run(db, renewals.renew_next, [], deps) == "failed"
    assert len(gateway.requests) == 1
    assert db.state.subscriptions[sub.id].status == "past_due"
    [declined] = db.events_of(ev.PAYMENT_FAILED)
    assert declined["failure_code"] == "no_saved_payment_method"


async def test_a_renewal_refused_outright_is_tried_again_next_round(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    sub = await active(db, deps, gateway, new_user())
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    begun = await run(db, renewals.renew_next, [], deps)
    assert isinstance(begun, Intent)
    async with db.transaction() as uow:
        await yookassa_subscriptions.undo_renewal(begun, uow)
    del db.state.intents[begun.id]  # the service drops the intent with its undo
    assert begun.id not in db.state.transactions
    again = await run(db, renewals.renew_next, [], deps)
    assert isinstance(again, Intent)
    assert again.id == begun.id  # the same period and attempt: the same idempotency key
    assert db.state.subscriptions[sub.id].status == "active"


async def test_a_coupon_makes_yookassa_charge_less_for_its_periods_only(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    # 30 % off once: the first charge asks YooKassa for 7.00 RUB, the renewal for 10.00
    await run(db, coupons.upsert_coupon, UpsertCoupon.model_validate(
        {"idempotency_key": key(), "code": "YK30", "name": "YK30", "percent_off": "30",
         "duration": "once"}), deps)  # fmt: skip
    gateway.saves = "pm_saved"
    command = CreateSubscription(
        idempotency_key=key(), user_id=new_user(), plan_code="pro", payment_source="yookassa",
        return_url="https://shop.example/back", coupon="YK30",
    )  # fmt: skip
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    await first_period(db, deps, intent)
    sub = sub_of(db, intent)
    assert sub.current_period_end is not None
    clock.set(sub.current_period_end)
    await renewal(db, deps)
    assert [r.amount_minor for r in gateway.requests] == [700, 1000]
    invoices = sorted(
        (i for i in db.state.invoices.values() if i.subscription_id == sub.id),
        key=lambda i: i.period_index or 0,
    )
    assert [(i.status, i.discount_minor, i.total_minor) for i in invoices] == [
        ("paid", 300, 700), ("paid", 0, 1000),
    ]  # fmt: skip
    assert db.state.redemptions[sub.id] == ("YK30", 1)
