"""A prorated change-plan of a YooKassa subscription on the fake unit of work: the upgrade's
proration is charged with the saved method (a canned YooKassa: no network) and the plan
switches only when YooKassa confirms that payment; a failed, canceled, refused or forged
one changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.plan_changes import ChangePlan
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_contracts.taxes import UpsertTaxRate
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidInput, InvalidState
from billing_worker.domain.events import PaymentOutcome
from billing_worker.handlers import (
    invoice_cards,
    invoices,
    plan_changes,
    renewals,
    subscriptions,
    taxes,
    wallet,
    yookassa_subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
from billing_worker.providers.base import PaymentRequest, PaymentResult, PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, key, money, new_user, run
from support.provider_kit import CannedGateway, canned_deps, deliver, payment_event

START = datetime(2027, 1, 1, tzinfo=UTC)  # a 31-day January: period 0 is Jan 1 - Feb 1


class CannedYooKassa(CannedGateway):
    """YooKassa answering each payment as the test set it; it keeps what it was asked."""

    trusts_method_ids = True

    def __init__(self) -> None:
        super().__init__("yookassa")
        self.status = PaymentStatus.SUCCEEDED
        self.saves: str | None = None
        self.requests: list[PaymentRequest] = []

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.requests.append(request)
        failed = self.status is PaymentStatus.FAILED
        return PaymentResult(
            f"yk_{request.transaction_id.hex[:12]}", self.status,
            failure_code="card_expired" if failed else None, saved_method_ref=self.saves,
            amount_minor=request.amount_minor, currency=request.currency,
            transaction_ref=str(request.transaction_id), confirmation={"status": self.status},
        )  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def gateway() -> CannedYooKassa:
    return CannedYooKassa()


@pytest.fixture
async def deps(db: FakeDatabase, gateway: CannedYooKassa) -> Deps:
    deps = canned_deps(gateway)
    rate = UpsertTaxRate(idempotency_key=key(), code="vat", name="VAT", percent="20",
                         inclusive=False)  # fmt: skip
    await run(db, taxes.upsert_tax_rate, rate, deps)
    for code, price, tax in (("pro", "10.00", None), ("team", "25.00", "vat")):
        plan = UpsertPlan.model_validate(
            {"idempotency_key": key(), "code": code, "name": code.title(), "tax_rate": tax,
             "price": money(price, "RUB"), "interval": "month"}
        )  # fmt: skip
        await run(db, subscriptions.upsert_plan, plan, deps)
    return deps


async def active(db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, user: str) -> uuid.UUID:
    """A pro subscription whose first payment succeeded and saved the card pm_saved."""
    gateway.saves = "pm_saved"
    command = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="pro", payment_source="yookassa",
        payment_method_id=None, return_url="https://shop.example/back",
    )  # fmt: skip
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    result = await yookassa_subscriptions.call_charge(intent, deps)
    async with db.transaction() as uow:
        created = await yookassa_subscriptions.finish_create(intent, result, uow, deps)
    assert isinstance(created, SubscriptionCreated)
    gateway.saves = None
    return created.subscription.id


def upgrade(user: str, sub: uuid.UUID, **extra: Any) -> ChangePlan:
    return ChangePlan.model_validate(
        {"idempotency_key": key(), "user_id": user, "subscription_id": sub,
         "plan_code": "team", **extra}
    )  # fmt: skip


async def begun(db: FakeDatabase, deps: Deps, command: ChangePlan) -> Intent:
    """Phase one, its intent committed as `commands.run_once` does."""
    intent = await run(db, plan_changes.change_plan, command, deps)
    assert isinstance(intent, Intent)
    async with db.transaction() as uow:
        await uow.intents.insert(intent)
    return intent


async def answered(db: FakeDatabase, deps: Deps, intent: Intent) -> SubscriptionOut:
    """Phases two and three: YooKassa asked, its answer recorded (the intent taken)."""
    charged = await wallet.call_deposit(intent, deps)
    async with db.transaction() as uow:
        assert await uow.intents.take(intent.id)
        return await invoice_cards.finish_plan_change(intent, charged, uow, deps)


def stored(db: FakeDatabase, sub: uuid.UUID) -> SubscriptionRow:
    return db.state.subscriptions[sub]


def code_of(db: FakeDatabase, sub: uuid.UUID) -> str:
    return db.state.plan_by_id(db.state.subscriptions[sub].plan_id).code


def proration_invoice(db: FakeDatabase) -> Any:
    [invoice] = [i for i in db.state.invoices.values() if i.subscription_id is None]
    return invoice


def payment_of(db: FakeDatabase, intent: Intent) -> TransactionRow:
    return db.state.transactions[intent.id]


def cancel_now(user: str, sub: uuid.UUID) -> CancelSubscription:
    return CancelSubscription(idempotency_key=key(), user_id=user, subscription_id=sub,
                              at_period_end=False)  # fmt: skip


async def test_an_upgrade_is_charged_with_the_saved_method_and_switches_on_its_confirmation(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)  # 21 of January's 31 days left
    gateway.status = PaymentStatus.PENDING
    before = len(db.events)
    intent = await begun(db, deps, upgrade(user, sub))
    # (2500 - 1000) x 21/31 = 1016.13 -> 1016 net, taxed at team's 20 %: 203 -> 1219
    assert (intent.kind, intent.provider, intent.request["amount_minor"]) == (
        "plan_change_card", "yookassa", 1219)  # fmt: skip
    out = await answered(db, deps, intent)
    [request] = gateway.requests[1:]
    assert (request.amount_minor, request.currency, request.payment_method_id) == (
        1219, "RUB", "pm_saved")  # fmt: skip
    # pending: still pro, the change shown, its invoice open
    assert (out.plan_code, out.pending_plan_code, out.pending_quantity) == ("pro", "team", 1)
    invoice = proration_invoice(db)
    assert (out.pending_invoice_id, invoice.status, invoice.total_minor) == (
        invoice.id, "open", 1219)  # fmt: skip
    [line] = invoice.lines
    assert (line.amount_minor, line.tax_minor, line.tax_rate_code) == (1016, 203, "vat")
    assert db.state.plan_switches == {}
    assert ev.SUBSCRIPTION_UPDATED not in [e.type for e in db.events[before:]]
    with pytest.raises(InvalidState):  # a change in flight
        await run(db, plan_changes.change_plan, upgrade(user, sub, quantity=2), deps)
    with pytest.raises(InvalidState):
        await run(db, subscriptions.cancel_subscription, cancel_now(user, sub), deps)

    confirmed = payment_event(payment_of(db, intent), PaymentOutcome.SUCCEEDED, "evt-ok")
    assert await deliver(db, deps, gateway, confirmed) == Applied.APPLIED

    row = stored(db, sub)
    assert (code_of(db, sub), row.pending_plan_id, row.pending_invoice_id) == ("team", None, None)
    assert proration_invoice(db).status == "paid"
    assert await balance_of(db, user, "RUB") == 0  # deposit 1219 in, invoice payment out
    [record] = db.state.plan_switches.values()
    assert (record.from_period_index, record.proration_minor) == (1, 1219)
    [updated] = db.events_of(ev.SUBSCRIPTION_UPDATED)
    assert (updated["plan_code"], updated["from_plan_code"], updated["when"]) == (
        "team", "pro", "now")  # fmt: skip
    assert updated["proration_charged"] == money("12.19", "RUB")
    # the same confirmation again, or another event of it: applied once
    assert await deliver(db, deps, gateway, confirmed) == Applied.DUPLICATE
    again = payment_event(payment_of(db, intent), PaymentOutcome.SUCCEEDED, "evt-again")
    assert await deliver(db, deps, gateway, again) == Applied.STALE
    assert len(db.state.plan_switches) == 1
    assert len(db.events_of(ev.SUBSCRIPTION_UPDATED)) == 1
    assert await balance_of(db, user, "RUB") == 0
    # the renewal charges the new terms: 25.00 + 20 %
    clock.set(datetime(2027, 2, 1, tzinfo=UTC))
    gateway.status = PaymentStatus.SUCCEEDED
    renewal = await run(db, renewals.renew_next, [], deps)
    assert isinstance(renewal, Intent)
    assert renewal.request["amount_minor"] == 3000


async def test_a_payment_confirmed_at_once_switches_in_the_reply(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    out = await answered(db, deps, await begun(db, deps, upgrade(user, sub)))
    assert (out.plan_code, out.pending_plan_code, out.pending_invoice_id) == ("team", None, None)
    assert proration_invoice(db).status == "paid"
    assert [r.proration_minor for r in db.state.plan_switches.values()] == [1219]


@pytest.mark.parametrize("how", ["declined", "canceled", "refused"])
async def test_a_payment_that_does_not_succeed_changes_nothing(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock, how: str
) -> None:
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    gateway.status = PaymentStatus.FAILED if how == "declined" else PaymentStatus.PENDING
    intent = await begun(db, deps, upgrade(user, sub))
    if how == "refused":  # YooKassa refused outright: phase one undone
        async with db.transaction() as uow:
            assert await uow.intents.take(intent.id)
            await invoice_cards.undo_plan_change(intent, uow)
        assert intent.id not in db.state.transactions
    else:
        await answered(db, deps, intent)
    if how == "canceled":  # pending, then YooKassa cancels it (expired)
        event = payment_event(payment_of(db, intent), PaymentOutcome.CANCELED)
        assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    row = stored(db, sub)
    assert (code_of(db, sub), row.pending_plan_id, row.pending_invoice_id) == ("pro", None, None)
    invoice = proration_invoice(db)
    assert invoice.status == "void"
    assert db.state.plan_switches == {}
    assert db.events_of(ev.SUBSCRIPTION_UPDATED) == []
    assert await balance_of(db, user, "RUB") in (None, 0)
    # nothing in flight any more: a change may be asked again
    gateway.status = PaymentStatus.SUCCEEDED
    out = await answered(db, deps, await begun(db, deps, upgrade(user, sub)))
    assert out.plan_code == "team"


async def test_an_unconfirmed_or_forged_notification_changes_nothing(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    gateway.status = PaymentStatus.PENDING
    intent = await begun(db, deps, upgrade(user, sub))
    await answered(db, deps, intent)
    payment = payment_of(db, intent)
    # YooKassa's API says another amount than ours: untrusted, nothing moves
    forged = payment_event(payment, PaymentOutcome.SUCCEEDED, amount_minor=1)
    assert await deliver(db, deps, gateway, forged) == Applied.UNTRUSTED
    # a claim YooKassa's API does not confirm is never applied
    claim = payment_event(payment, PaymentOutcome.SUCCEEDED)
    assert await gateway.confirm(claim) is None
    row = stored(db, sub)
    assert (code_of(db, sub), row.pending_invoice_id) == ("pro", proration_invoice(db).id)
    assert proration_invoice(db).status == "open"
    assert db.state.plan_switches == {}
    assert await balance_of(db, user, "RUB") in (None, 0)


async def test_an_invoice_paid_from_the_balance_meanwhile_applies_the_change_once(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    """The open proration invoice paid from the balance while the card payment is pending:
    the change follows the paid invoice when the payment ends, even if it then fails."""
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    gateway.status = PaymentStatus.PENDING
    intent = await begun(db, deps, upgrade(user, sub))
    await answered(db, deps, intent)
    async with db.transaction() as uow:  # 12.19 on the balance from elsewhere
        account = await uow.wallet.open_account(user, "RUB")
        assert account is not None
        await uow.wallet.move_balance(user, "RUB", 1219, 0)
    pay = invoices.PayInvoice(idempotency_key=key(), user_id=user,
                              invoice_id=proration_invoice(db).id, source="balance")  # fmt: skip
    await run(db, invoices.pay_invoice, pay, deps)
    assert code_of(db, sub) == "pro"  # the payment has not ended yet
    event = payment_event(payment_of(db, intent), PaymentOutcome.FAILED)
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    assert (code_of(db, sub), stored(db, sub).pending_invoice_id) == ("team", None)
    assert [r.proration_minor for r in db.state.plan_switches.values()] == [1219]


async def test_without_a_saved_method_the_upgrade_is_refused_before_anything(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    user = new_user()
    sub = await active(db, deps, gateway, user)
    async with db.transaction() as uow:
        await uow.subscriptions.update(sub, payment_method_id=None)
    clock.advance(days=10)
    invoices_before = len(db.state.invoices)
    with pytest.raises(InvalidState):
        await run(db, plan_changes.change_plan, upgrade(user, sub), deps)
    assert len(db.state.invoices) == invoices_before
    assert (code_of(db, sub), stored(db, sub).pending_plan_id) == ("pro", None)
    assert len(gateway.requests) == 1  # the first period's only


async def test_a_change_that_can_no_longer_apply_credits_its_confirmed_proration_back(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    """The user took a live team subscription while the upgrade's payment was pending:
    the confirmed money is not kept for nothing, it goes back to the balance."""
    user = new_user()
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    gateway.status = PaymentStatus.PENDING
    intent = await begun(db, deps, upgrade(user, sub))
    await answered(db, deps, intent)
    other = CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code="team", payment_source="yookassa",
        payment_method_id=None, return_url="https://shop.example/back",
    )  # fmt: skip
    await run(db, subscriptions.create_subscription, other, deps)  # incomplete: live
    event = payment_event(payment_of(db, intent), PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    assert (code_of(db, sub), stored(db, sub).pending_invoice_id) == ("pro", None)
    assert proration_invoice(db).status == "paid"
    assert db.state.plan_switches == {}
    assert await balance_of(db, user, "RUB") == 1219


async def test_a_downgrade_is_credited_and_another_interval_is_still_refused(
    db: FakeDatabase, deps: Deps, gateway: CannedYooKassa, clock: ManualClock
) -> None:
    user = new_user()
    yearly = UpsertPlan.model_validate(
        {"idempotency_key": key(), "code": "year", "name": "Year", "interval": "year",
         "price": money("100.00", "RUB")}
    )  # fmt: skip
    await run(db, subscriptions.upsert_plan, yearly, deps)
    sub = await active(db, deps, gateway, user)
    clock.advance(days=10)
    asked = len(gateway.requests)
    with pytest.raises(InvalidInput):  # another interval with prorate: not built yet
        await run(db, plan_changes.change_plan, upgrade(user, sub, plan_code="year"), deps)
    assert (code_of(db, sub), len(db.state.invoices), len(gateway.requests)) == (
        "pro", 1, asked)  # fmt: skip
    # seats down on the same plan: a downgrade, credited to the balance at once
    two = await run(db, plan_changes.change_plan, upgrade(user, sub, plan_code="pro",
                                                          quantity=2), deps)  # fmt: skip
    assert isinstance(two, Intent)  # more seats: an upgrade, charged at YooKassa
    async with db.transaction() as uow:
        await uow.intents.insert(two)
    out = await answered(db, deps, two)
    assert out.quantity == 2
    back = await run(db, plan_changes.change_plan, upgrade(user, sub, plan_code="pro",
                                                           quantity=1), deps)  # fmt: skip
    assert isinstance(back, SubscriptionOut)
    # 1000 x 21/31 = 677.42 -> 677 back, untaxed (pro), no YooKassa payment
    assert (back.quantity, await balance_of(db, user, "RUB")) == (1, 677)
    assert len(gateway.requests) == asked + 1
