"""Confirmed provider refunds applied to the ledger, on the fake unit of work: each one
recorded once for exactly its amount, never past the payment, which is `refunded` when
they add up to it."""

from __future__ import annotations

import pytest

from billing_contracts import events as ev
from billing_worker.domain.errors import Unprocessable
from billing_worker.handlers import wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
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
    refunds_of,
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


async def test_a_partial_refund_records_exactly_its_amount_and_the_rest_refunds_it(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    assert await deliver(db, deps, gateway, refund_event(payment, "re_1", amount=1000)) == (
        Applied.APPLIED
    )
    [refund] = refunds_of(db, payment)
    assert (refund.kind, refund.status, refund.amount_minor, refund.provider_ref) == (
        "refund",
        "completed",
        1000,
        "re_1",
    )
    assert refund.provider_confirmation is not None
    assert refund.provider_confirmation["amount_minor"] == 1000
    assert db.state.transactions[payment.id].status == "completed"
    assert await balance_of(db, user) == 1500
    await deliver(db, deps, gateway, refund_event(payment, "re_2", amount=1500))
    assert sorted(r.amount_minor for r in refunds_of(db, payment)) == [1000, 1500]
    assert db.state.transactions[payment.id].status == "refunded"
    assert await balance_of(db, user) == 0


async def test_a_refund_told_twice_is_recorded_once(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    first = refund_event(payment, "re_1", amount=1000)
    assert await deliver(db, deps, gateway, first) == Applied.APPLIED
    assert await deliver(db, deps, gateway, first) == Applied.DUPLICATE
    retold = refund_event(payment, "re_1", amount=1000)  # another event about re_1
    assert await deliver(db, deps, gateway, retold) == Applied.STALE
    assert [r.amount_minor for r in refunds_of(db, payment)] == [1000]
    assert await balance_of(db, user) == 1500


async def test_a_running_refund_total_records_only_what_is_new(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    """Stripe tells the charge's refunded total: each event records the part not recorded."""
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    assert await deliver(db, deps, gateway, refund_event(payment, "ch_1", total=1000)) == (
        Applied.APPLIED
    )
    assert await deliver(db, deps, gateway, refund_event(payment, "ch_1", total=1000)) == (
        Applied.STALE
    )
    assert await deliver(db, deps, gateway, refund_event(payment, "ch_1", total=2500)) == (
        Applied.APPLIED
    )
    assert sorted(r.amount_minor for r in refunds_of(db, payment)) == [1000, 1500]
    assert (db.state.transactions[payment.id].status, await balance_of(db, user)) == (
        "refunded",
        0,
    )


@pytest.mark.parametrize("refunds", [[2501], [1000, 1501]])
async def test_refunds_never_exceed_the_payment(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, refunds: list[int]
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    *accepted, too_much = refunds
    for n, amount in enumerate(accepted):
        await deliver(db, deps, gateway, refund_event(payment, f"re_ok_{n}", amount=amount))
    with pytest.raises(Unprocessable, match="past its amount"):
        await deliver(db, deps, gateway, refund_event(payment, "re_big", amount=too_much))
    assert [r.amount_minor for r in refunds_of(db, payment)] == accepted
    assert db.state.transactions[payment.id].status == "completed"
    assert await balance_of(db, user) == 2500 - sum(accepted)


async def test_a_refund_in_another_currency_is_untrusted(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    event = refund_event(payment, "re_1", amount=1000, currency="EUR")
    assert await deliver(db, deps, gateway, event) == Applied.UNTRUSTED
    assert (refunds_of(db, payment), await balance_of(db, user)) == ([], 2500)


async def test_a_refund_of_a_payment_that_is_not_completed_is_unprocessable(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    payment = await pending_deposit(db, deps, new_user(), "25.00")
    with pytest.raises(Unprocessable, match="processing"):
        await deliver(db, deps, gateway, refund_event(payment, "re_1", amount=1000))
    assert refunds_of(db, payment) == []


async def test_a_refund_of_a_deposit_already_spent_is_left_to_a_human(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await run(db, wallet.withdraw, withdrawal(user, "20.00"), deps)
    with pytest.raises(Unprocessable, match="exceeds"):
        await deliver(db, deps, gateway, refund_event(payment, "re_1", amount=1000))
    assert (refunds_of(db, payment), await balance_of(db, user)) == ([], 500)


async def test_a_refund_taking_the_balance_under_the_threshold_announces_it(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway
) -> None:
    user = new_user()
    payment = await completed_deposit(db, deps, gateway, user, "25.00")
    await deliver(db, deps, gateway, refund_event(payment, "re_1", amount=2000))
    [low] = db.events_of(ev.BALANCE_LOW)
    assert (low["user_id"], await balance_of(db, user)) == (user, 500)
