"""Confirmed provider payment events applied to the ledger, on the fake unit of work: no
PostgreSQL, no RabbitMQ, no provider (a canned gateway answers `confirm`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.wallet import Deposit
from billing_worker.db.intents import Intent
from billing_worker.domain.errors import TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.handlers import wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, key, money, new_user, run
from support.provider_kit import CannedGateway, canned_deps, deliver, payment_event, pending_deposit


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def gateway() -> CannedGateway:
    return CannedGateway()


@pytest.fixture
def deps(gateway: CannedGateway) -> Deps:
    return canned_deps(gateway)


async def test_a_succeeded_event_completes_the_pending_deposit_and_credits_it(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    row = await pending_deposit(db, deps, user, "25.00")
    assert (row.status, await balance_of(db, user)) == ("processing", 0)
    event = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    done = db.state.transactions[row.id]
    assert (done.status, done.provider_confirmation) == ("completed", event.confirmation)
    assert await balance_of(db, user) == 2500
    assert [e.type for e in db.events] == [ev.PAYMENT_SUCCESS, ev.DEPOSIT_COMPLETED]
    assert db.events_of(ev.DEPOSIT_COMPLETED)[0]["balance"] == money("25.00")


async def test_a_redelivered_or_repeated_success_credits_the_deposit_once(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    row = await pending_deposit(db, deps, user, "25.00")
    event = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    assert await deliver(db, deps, gateway, event) == Applied.DUPLICATE  # same event id
    again = payment_event(row, PaymentOutcome.SUCCEEDED)  # another event telling the same
    assert await deliver(db, deps, gateway, again) == Applied.STALE
    assert await balance_of(db, user) == 2500
    assert len(db.events_of(ev.DEPOSIT_COMPLETED)) == 1
    assert [str(t.target) for t in db.state.trails[row.id]].count("completed") == 1


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(PaymentOutcome.FAILED, "failed"), (PaymentOutcome.CANCELED, "canceled")],
)
async def test_a_failed_or_canceled_payment_credits_nothing_and_a_late_success_is_stale(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, outcome: PaymentOutcome, status: str
) -> None:
    user = new_user()
    row = await pending_deposit(db, deps, user, "25.00")
    failed = payment_event(row, outcome, failure_code="card_declined", failure_message="no")
    assert await deliver(db, deps, gateway, failed) == Applied.APPLIED
    moved = db.state.transactions[row.id]
    assert (moved.status, moved.failure_code, moved.failure_message) == (
        status,
        "card_declined",
        "no",
    )
    assert [e.type for e in db.events] == [ev.PAYMENT_FAILED]
    late = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, gateway, late) == Applied.STALE
    assert (db.state.transactions[row.id].status, await balance_of(db, user)) == (status, 0)
    assert [e.type for e in db.events] == [ev.PAYMENT_FAILED]


async def test_an_event_overtaking_its_payment_is_retried_and_then_applied_once(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    command = Deposit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money("25.00")}
    )
    intent: Intent = await run(db, wallet.deposit, command, deps)
    charged = await wallet.call_deposit(intent, deps)
    # the callback comes before the provider's answer is recorded: no payment has its ref
    ours = dataclasses.replace(
        db.state.transactions[intent.id], provider_ref=charged.result.provider_ref
    )
    early = payment_event(ours, PaymentOutcome.SUCCEEDED)
    with pytest.raises(TransientError):
        await deliver(db, deps, gateway, early)
    assert ("provider:sandbox", early.event_id) not in db.state.records  # rolled back
    assert (db.state.transactions[intent.id].status, db.events) == ("created", [])
    async with db.transaction() as uow:
        await wallet.finish_deposit(intent, charged, uow, deps)
    assert await deliver(db, deps, gateway, early) == Applied.APPLIED  # the redelivery
    assert await balance_of(db, user) == 2500


@pytest.mark.parametrize(
    "wrong",
    [
        {"amount_minor": 2499},
        {"amount_minor": 250000},
        {"currency": "EUR"},
        {"transaction_ref": "00000000-0000-0000-0000-000000000000"},
        {"amount_minor": None},  # a success must say what was paid
        {"currency": None},
    ],
)
async def test_a_payment_the_provider_describes_otherwise_is_untrusted_and_moves_nothing(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, wrong: dict[str, Any]
) -> None:
    user = new_user()
    row = await pending_deposit(db, deps, user, "25.00")
    event = payment_event(row, PaymentOutcome.SUCCEEDED, **wrong)
    assert await deliver(db, deps, gateway, event) == Applied.UNTRUSTED
    assert (db.state.transactions[row.id].status, await balance_of(db, user)) == ("processing", 0)
    assert db.events == []


async def test_an_event_billing_does_not_act_on_is_ignored(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    row = await pending_deposit(db, deps, new_user(), "25.00")
    assert await deliver(db, deps, gateway, payment_event(row, None)) == Applied.IGNORED
    assert db.state.transactions[row.id].status == "processing"


async def test_the_method_the_provider_saved_with_a_deposit_is_the_users(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    row = await pending_deposit(db, deps, user, "25.00")
    event = payment_event(row, PaymentOutcome.SUCCEEDED, saved_method_ref="pm_saved")
    await deliver(db, deps, gateway, event)
    async with db.transaction() as uow:
        assert await uow.users.payment_method_of(user, "sandbox", "pm_saved") is not None
        assert await uow.users.payment_method_of(new_user(), "sandbox", "pm_saved") is None


async def test_a_subscription_event_without_its_subscriptions_state_is_retried(
    db: FakeDatabase, deps: Deps
) -> None:
    event = ProviderEvent("stripe", key(), None, None, "customer.subscription.updated",
                          subscription_ref="sub_1")  # fmt: skip
    with pytest.raises(TransientError):
        async with db.transaction() as uow:
            await apply_provider_event(event, uow, deps, "provider:stripe")
    assert db.state.records == {}
