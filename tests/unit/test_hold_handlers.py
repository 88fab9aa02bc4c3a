"""The holds' rules on the fake unit of work: reserve only what is available, capture
(part of) a hold as a withdrawal, release, expiry, ownership, and every debit that may
take only what open holds leave."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from billing_contracts import events as ev
from billing_contracts.holds import CaptureHold, HoldResult, PlaceHold, ReleaseHold
from billing_contracts.wallet import GetBalance
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
)
from billing_worker.handlers import holds, wallet
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import deposit, key, make_deps, money, new_user, run, wire, withdrawal


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="10")


def a_hold(user: str, amount: str, seconds: int = 600, **extra: Any) -> PlaceHold:
    return PlaceHold.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money(amount),
         "expires_in_seconds": seconds, **extra}
    )  # fmt: skip


def capture(user: str, hold_id: UUID, amount: str | None = None, currency: str = "USD") -> Any:
    body: dict[str, Any] = {"idempotency_key": key(), "user_id": user, "hold_id": str(hold_id)}
    if amount is not None:
        body["amount"] = money(amount, currency)
    return CaptureHold.model_validate(body)


def release(user: str, hold_id: UUID) -> ReleaseHold:
    return ReleaseHold.model_validate(
        {"idempotency_key": key(), "user_id": user, "hold_id": str(hold_id)}
    )


def account(db: FakeDatabase, user: str) -> tuple[int, int]:
    row = db.state.accounts[(user, "USD")]
    return row.balance_minor, row.held_minor


async def funded(db: FakeDatabase, deps: Deps, amount: str = "100.00") -> str:
    user = new_user()
    await deposit(db, deps, user, amount)
    db.events.clear()
    return user


async def test_a_hold_reserves_what_is_available_and_leaves_the_balance(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "60.00", reference="saga-1"), deps)
    assert (placed.balance, placed.available) == (wire("100.00"), wire("40.00"))
    assert placed.hold.status == "open"
    assert placed.hold.expires_at == clock.now + timedelta(seconds=600)
    assert account(db, user) == (10000, 6000)
    [created] = db.events_of(ev.HOLD_CREATED)
    assert (created["reference"], created["available"]) == ("saga-1", money("40.00"))

    with pytest.raises(InsufficientFunds) as refused:  # 40.00 left, not 50.00
        await run(db, holds.place_hold, a_hold(user, "50.00"), deps)
    assert refused.value.details["available"] == money("40.00")
    assert refused.value.details["balance"] == money("100.00")
    assert account(db, user) == (10000, 6000)  # the refusal held nothing
    assert len(db.state.holds) == 1


async def test_no_debit_takes_held_money(db: FakeDatabase, deps: Deps) -> None:
    user = await funded(db, deps)
    await run(db, holds.place_hold, a_hold(user, "70.00"), deps)
    with pytest.raises(InsufficientFunds) as refused:
        await run(db, wallet.withdraw, withdrawal(user, "31.00"), deps)
    assert "available" in refused.value.message
    async with db.transaction() as uow:  # charges and take-backs move balances like this
        assert await uow.wallet.move_balance(user, "USD", -3001, 0) is None
    done = await run(db, wallet.withdraw, withdrawal(user, "30.00"), deps)
    assert done.balance == wire("70.00")
    assert account(db, user) == (7000, 7000)


async def test_a_partial_capture_withdraws_that_much_and_releases_the_rest(
    db: FakeDatabase, deps: Deps
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "60.00"), deps)
    db.events.clear()

    result = await run(db, holds.capture_hold, capture(user, placed.hold.id, "25.00"), deps)

    assert (result.hold.status, result.hold.captured) == ("captured", wire("25.00"))
    assert (result.balance, result.available) == (wire("75.00"), wire("75.00"))
    assert account(db, user) == (7500, 0)
    row = db.state.transactions[result.transaction.id]
    assert (row.kind, row.status, row.amount_minor, row.provider) == (
        "withdrawal", "completed", 2500, "balance"
    )  # fmt: skip
    assert row.reference == str(placed.hold.id)
    assert [e.type for e in db.events] == [ev.WITHDRAWAL_COMPLETED, ev.HOLD_CAPTURED]
    assert db.events_of(ev.HOLD_CAPTURED)[0]["captured"] == money("25.00")
    assert db.state.hold_trails[placed.hold.id][-1] == ("open", "captured", "captured")


async def test_a_capture_without_an_amount_takes_the_whole_hold(
    db: FakeDatabase, deps: Deps
) -> None:
    user = await funded(db, deps, "100.00")
    placed = await run(db, holds.place_hold, a_hold(user, "95.00"), deps)
    result = await run(db, holds.capture_hold, capture(user, placed.hold.id), deps)
    assert result.hold.captured == wire("95.00")
    assert account(db, user) == (500, 0)
    assert [e.type for e in db.events][-3:] == [
        ev.WITHDRAWAL_COMPLETED, ev.BALANCE_LOW, ev.HOLD_CAPTURED
    ]  # fmt: skip


async def test_a_capture_of_more_than_the_hold_or_in_another_currency_is_refused(
    db: FakeDatabase, deps: Deps
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "60.00"), deps)
    with pytest.raises(InvalidInput):
        await run(db, holds.capture_hold, capture(user, placed.hold.id, "60.01"), deps)
    with pytest.raises(CurrencyMismatch):
        await run(db, holds.capture_hold, capture(user, placed.hold.id, "10.00", "EUR"), deps)
    assert account(db, user) == (10000, 6000)
    assert db.state.holds[placed.hold.id].status == "open"


async def test_another_users_hold_is_not_found_worded_as_a_missing_one(
    db: FakeDatabase, deps: Deps
) -> None:
    owner = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(owner, "60.00"), deps)
    thief, missing = new_user(), uuid4()
    with pytest.raises(NotFound) as theirs:
        await run(db, holds.capture_hold, capture(thief, placed.hold.id), deps)
    with pytest.raises(NotFound) as nobodys:
        await run(db, holds.capture_hold, capture(thief, missing), deps)
    with pytest.raises(NotFound):
        await run(db, holds.release_hold, release(thief, placed.hold.id), deps)
    assert theirs.value.message.replace(str(placed.hold.id), "?") == nobodys.value.message.replace(
        str(missing), "?"
    )
    assert account(db, owner) == (10000, 6000)


async def test_a_release_frees_the_hold_and_nothing_moves_it_again(
    db: FakeDatabase, deps: Deps
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "60.00"), deps)
    released = await run(db, holds.release_hold, release(user, placed.hold.id), deps)
    assert (released.hold.status, released.available) == ("released", wire("100.00"))
    assert account(db, user) == (10000, 0)
    assert db.events_of(ev.HOLD_RELEASED)[0]["status"] == "released"
    for again in (holds.capture_hold, holds.release_hold):
        command = (
            capture(user, placed.hold.id)
            if again is holds.capture_hold
            else release(user, placed.hold.id)
        )
        with pytest.raises(InvalidState):
            await run(db, again, command, deps)
    assert account(db, user) == (10000, 0)


async def test_a_captured_hold_cannot_be_released_nor_captured_again(
    db: FakeDatabase, deps: Deps
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "60.00"), deps)
    await run(db, holds.capture_hold, capture(user, placed.hold.id, "10.00"), deps)
    with pytest.raises(InvalidState):
        await run(db, holds.release_hold, release(user, placed.hold.id), deps)
    with pytest.raises(InvalidState):
        await run(db, holds.capture_hold, capture(user, placed.hold.id, "10.00"), deps)
    assert account(db, user) == (9000, 0)


async def test_expiry_releases_only_holds_past_their_time(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = await funded(db, deps)
    short = await run(db, holds.place_hold, a_hold(user, "30.00", seconds=60), deps)
    long = await run(db, holds.place_hold, a_hold(user, "20.00", seconds=3600), deps)
    assert await run(db, holds.expire_due, 10, deps) == 0
    clock.advance(seconds=60)
    assert await run(db, holds.expire_due, 10, deps) == 1
    assert db.state.holds[short.hold.id].status == "expired"
    assert db.state.holds[long.hold.id].status == "open"
    assert account(db, user) == (10000, 2000)
    [expired] = db.events_of(ev.HOLD_EXPIRED)
    assert (expired["hold_id"], expired["available"]) == (str(short.hold.id), money("80.00"))
    with pytest.raises(InvalidState):  # an expired hold is never captured
        await run(db, holds.capture_hold, capture(user, short.hold.id), deps)


async def test_a_hold_past_its_expiry_is_not_captured_even_before_the_job_ran(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = await funded(db, deps)
    placed = await run(db, holds.place_hold, a_hold(user, "30.00", seconds=60), deps)
    clock.advance(seconds=60)
    with pytest.raises(InvalidState) as refused:
        await run(db, holds.capture_hold, capture(user, placed.hold.id), deps)
    assert refused.value.details["status"] == "expired"
    released = await run(db, holds.release_hold, release(user, placed.hold.id), deps)
    assert released.available == wire("100.00")  # the owner may still free it


async def test_expiry_works_in_batches(db: FakeDatabase, deps: Deps, clock: ManualClock) -> None:
    user = await funded(db, deps)
    for _ in range(5):
        await run(db, holds.place_hold, a_hold(user, "1.00", seconds=1), deps)
    clock.advance(seconds=1)
    assert [await run(db, holds.expire_due, 2, deps) for _ in range(4)] == [2, 2, 1, 0]
    assert account(db, user) == (10000, 0)


async def test_the_balance_shows_what_is_available(db: FakeDatabase, deps: Deps) -> None:
    user = await funded(db, deps)
    await run(db, holds.place_hold, a_hold(user, "12.34"), deps)
    result = await run(db, wallet.get_balance, GetBalance(user_id=user), deps)
    [usd] = result.accounts
    assert (usd.balance, usd.available) == (wire("100.00"), wire("87.66"))


def test_a_hold_result_carries_balance_and_available() -> None:
    assert {"balance", "available", "hold"} <= set(HoldResult.model_fields)
