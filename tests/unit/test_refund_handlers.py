"""`billing.payment.refund` on the fake unit of work: the owner, what may be refunded and
how much, a deposit's amount off the balance before the provider is asked, refunds in
flight holding their amount, the provider's answer, and the webhook of a refund the
command made never recorded a second time."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from billing_contracts import events as ev
from billing_contracts.refunds import RefundResult
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    InvalidState,
    NotFound,
    TransientError,
)
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.handlers import refunds, wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
from billing_worker.providers.base import PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, new_user, run, withdrawal
from support.provider_kit import (
    CannedGateway,
    canned_deps,
    completed_deposit,
    deliver,
    pending_deposit,
    refund_event,
)
from support.refund_kit import (
    answer,
    begin,
    finish,
    refund_command,
    refund_through,
    refunds_of,
    undo,
)


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


async def test_a_full_refund_to_the_card_takes_the_deposit_off_the_balance(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    result = await refund_through(db, deps, refund_command(user, payment.id))
    assert isinstance(result, RefundResult)
    assert (result.refund.status, result.refund.amount.amount, result.payment.status) == (
        "completed", "25.00", "refunded",
    )  # fmt: skip
    assert (result.refunded_total.amount, result.destination) == ("25.00", "original")
    assert await balance_of(db, user) == 0
    [refund] = refunds_of(db, payment)
    assert refund.provider_confirmation is not None
    assert refund.provider_confirmation["amount_minor"] == 2500
    [event] = db.events_of(ev.PAYMENT_REFUNDED)
    assert (event["transaction_id"], event["refund_id"]) == (str(payment.id), str(refund.id))
    assert (event["amount"], event["refunded_total"], event["destination"]) == (
        {"amount": "25.00", "currency": "USD"}, {"amount": "25.00", "currency": "USD"},
        "original",
    )  # fmt: skip


async def test_three_partial_refunds_add_up_and_a_fourth_is_refused(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "30.00")
    for amount in ("10.00", "5.00", "15.00"):
        result = await refund_through(db, deps, refund_command(user, payment.id, amount))
        assert isinstance(result, RefundResult), result
    assert db.state.transactions[payment.id].status == "refunded"
    assert [e["refunded_total"]["amount"] for e in db.events_of(ev.PAYMENT_REFUNDED)] == [
        "10.00", "15.00", "30.00",
    ]  # fmt: skip
    refused = await refund_through(db, deps, refund_command(user, payment.id, "0.01"))
    assert isinstance(refused, InvalidState)
    assert (len(refunds_of(db, payment)), await balance_of(db, user)) == (3, 0)


async def test_a_refund_larger_than_what_is_left_is_refused_and_writes_nothing(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await refund_through(db, deps, refund_command(user, payment.id, "20.00"))
    refused = await refund_through(db, deps, refund_command(user, payment.id, "5.01"))
    assert isinstance(refused, InvalidState)
    assert refused.details["refundable"] == {"amount": "5.00", "currency": "USD"}
    assert (len(refunds_of(db, payment)), await balance_of(db, user)) == (1, 500)
    assert db.state.intents == {}


async def test_a_refund_in_flight_holds_its_amount(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    """Concurrent refunds: what is asked of the provider counts before it answers."""
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    first = await begin(db, deps, refund_command(user, payment.id, "20.00"))
    refused = await refund_through(db, deps, refund_command(user, payment.id, "10.00"))
    assert isinstance(refused, InvalidState)
    await finish(db, deps, first, answer(first))
    assert await balance_of(db, user) == 500


async def test_another_users_payment_is_not_found_like_a_missing_one(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    owner, other = new_user(), new_user()
    payment = await completed_deposit(db, deps, gateway, owner, "25.00")
    theirs = await refund_through(db, deps, refund_command(other, payment.id))
    missing = await refund_through(db, deps, refund_command(other, derived_id("x", "y", "z")))
    assert isinstance(theirs, NotFound)
    assert isinstance(missing, NotFound)
    assert theirs.message == f"no payment {payment.id}"
    assert theirs.details.keys() == missing.details.keys()
    assert (refunds_of(db, payment), await balance_of(db, owner)) == ([], 2500)


async def test_a_payment_not_completed_cannot_be_refunded(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    processing = await pending_deposit(db, deps, user, "25.00")
    refused = await refund_through(db, deps, refund_command(user, processing.id))
    assert isinstance(refused, InvalidState)
    assert refunds_of(db, processing) == []


async def test_a_withdrawal_cannot_be_refunded(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    await completed_deposit(db, deps, gateway, user, "25.00")
    spent = await run(db, wallet.withdraw, withdrawal(user, "5.00"), deps)
    refused = await refund_through(db, deps, refund_command(user, spent.transaction.id))
    assert isinstance(refused, InvalidState)


@pytest.mark.parametrize("amount", ["0.00", "-1.00"])
def test_a_zero_or_negative_amount_is_not_a_refund(amount: str) -> None:
    with pytest.raises(ValidationError):
        refund_command("u-1", derived_id("a", "b", "c"), amount)


async def test_an_amount_in_another_currency_is_refused(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    command = refund_command(user, payment.id, currency="EUR", amount="1.00")
    assert isinstance(await refund_through(db, deps, command), CurrencyMismatch)


async def test_a_deposit_spent_is_refused_and_nothing_is_asked_of_the_provider(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await run(db, wallet.withdraw, withdrawal(user, "20.00"), deps)
    refused = await refund_through(db, deps, refund_command(user, payment.id, "10.00"))
    assert isinstance(refused, InsufficientFunds)
    assert (db.state.intents, refunds_of(db, payment)) == ({}, [])
    assert await balance_of(db, user) == 500


async def test_a_deposit_cannot_be_refunded_to_the_balance(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    refused = await refund_through(
        db, deps, refund_command(user, payment.id, destination="balance")
    )
    assert isinstance(refused, InvalidState)
    assert await balance_of(db, user) == 2500


async def test_a_payment_from_the_balance_is_refunded_to_it_whatever_the_destination(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    await completed_deposit(db, deps, gateway, user, "25.00")
    async with db.transaction() as uow:
        account = await uow.wallet.open_account(user, "USD")
        await uow.wallet.move_balance(user, "USD", -1000, 0)
        paid = await uow.wallet.record(Transaction.invoice_payment(
            derived_id("inv", user, "1"), user, account, 1000, "USD", uow.clock(),
            invoice_id=derived_id("i", user, "1"), number="INV-2026-000001",
        ))  # fmt: skip
    result = await refund_through(db, deps, refund_command(user, paid.id, "4.00"))
    assert isinstance(result, RefundResult)
    assert (result.destination, result.refund.provider, result.refund.status) == (
        "balance", "balance", "completed",
    )  # fmt: skip
    assert await balance_of(db, user) == 1900
    assert db.state.intents == {}


async def test_a_refund_the_provider_refuses_gives_the_deposit_back(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    intent = await begin(db, deps, refund_command(user, payment.id, "10.00"))
    assert await balance_of(db, user) == 1500
    await undo(db, intent)
    assert (refunds_of(db, payment), await balance_of(db, user)) == ([], 2500)


async def test_a_pending_refund_completes_by_its_webhook_once(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    intent = await begin(db, deps, refund_command(user, payment.id))
    given = answer(intent, PaymentStatus.PENDING)
    result = await finish(db, deps, intent, given)
    assert (result.refund.status, result.payment.status) == ("processing", "completed")
    assert db.events_of(ev.PAYMENT_REFUNDED) == []
    event = refund_event(payment, given.ref, amount=2500)
    assert await deliver(db, deps, gateway, event) == Applied.APPLIED
    [refund] = refunds_of(db, payment)
    assert (refund.status, db.state.transactions[payment.id].status) == ("completed", "refunded")
    again = refund_event(payment, given.ref, amount=2500)
    assert await deliver(db, deps, gateway, again) == Applied.STALE
    assert (len(db.events_of(ev.PAYMENT_REFUNDED)), await balance_of(db, user)) == (1, 0)


@pytest.mark.parametrize("form", ["refund object", "running total"])
async def test_the_webhook_of_a_command_refund_records_nothing_more(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, form: str
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    intent = await begin(db, deps, refund_command(user, payment.id, "10.00"))
    given = answer(intent)
    told = (
        refund_event(payment, given.ref, amount=1000)
        if form == "refund object"
        else refund_event(payment, "ch_1", total=1000)
    )
    with pytest.raises(TransientError):  # asked, not answered: it may be this very refund
        await deliver(db, deps, gateway, told)
    await finish(db, deps, intent, given)
    retold = dataclasses.replace(told, event_id="again")
    assert await deliver(db, deps, gateway, retold) == Applied.STALE
    assert ([r.amount_minor for r in refunds_of(db, payment)], await balance_of(db, user)) == (
        [1000], 1500,
    )  # fmt: skip
    assert len(db.events_of(ev.PAYMENT_REFUNDED)) == 1


async def test_a_dashboard_refund_after_a_command_refund_is_recorded_once(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    """Stripe's running total: 10.00 by command, then 5.00 in the dashboard (total 15.00)."""
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await refund_through(db, deps, refund_command(user, payment.id, "10.00"))
    assert await deliver(db, deps, gateway, refund_event(payment, "ch_1", total=1500)) == (
        Applied.APPLIED
    )
    assert await deliver(db, deps, gateway, refund_event(payment, "ch_1", total=1500)) == (
        Applied.STALE
    )
    assert sorted(r.amount_minor for r in refunds_of(db, payment)) == [500, 1000]
    assert await balance_of(db, user) == 1000
    totals = [e["refunded_total"]["amount"] for e in db.events_of(ev.PAYMENT_REFUNDED)]
    assert totals == ["10.00", "15.00"]


async def test_a_refund_nobody_asked_for_is_recorded_once_and_announced(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await deliver(db, deps, gateway, refund_event(payment, "re_dash", amount=700))
    await deliver(db, deps, gateway, refund_event(payment, "re_dash", amount=700))
    assert [r.amount_minor for r in refunds_of(db, payment)] == [700]
    [event] = db.events_of(ev.PAYMENT_REFUNDED)
    assert (event["amount"]["amount"], event["destination"]) == ("7.00", "original")
    left = await refund_through(db, deps, refund_command(user, payment.id))
    assert isinstance(left, RefundResult)
    assert left.refund.amount.amount == "18.00"


def test_the_refund_intent_kind_has_its_flow() -> None:
    from billing_worker.handlers.flows import FLOWS

    assert FLOWS[refunds.REFUND].finish is refunds.finish_refund
