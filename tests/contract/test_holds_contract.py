"""The holds repository: the same assertions on the fake and on PostgreSQL (see
conftest.py), so the fake the hold handlers' unit tests use cannot drift from the SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from billing_contracts.holds import HoldStatus as Status
from billing_worker.domain.holds import Close, HoldRow
from billing_worker.domain.ledger import Transaction
from support.contract import Repo

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def new_user() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


async def funded(repo: Repo, minor: int) -> tuple[str, uuid.UUID]:
    user = new_user()
    account = await repo.uow.wallet.open_account(user, "USD")
    await repo.uow.wallet.move_balance(user, "USD", minor, 0)
    return user, account


def a_hold(user: str, account: uuid.UUID, minor: int, expires: datetime = T0) -> HoldRow:
    return HoldRow(uuid.uuid4(), user, account, "USD", minor, "open", expires, T0, "ref")


async def test_a_reservation_takes_only_what_is_available(repo: Repo) -> None:
    holds = repo.uow.holds
    user, account = await funded(repo, 1000)
    assert await holds.reserve(new_user(), "USD", 1) is None  # no account
    first = await holds.reserve(user, "USD", 600)
    assert first is not None
    assert (first.account_id, first.balance_minor, first.held_minor) == (account, 1000, 600)
    assert first.available_minor == 400
    assert await holds.reserve(user, "USD", 401) is None
    assert await holds.reserve(user, "USD", 400) is not None
    assert await holds.balances(user) == [("USD", 1000, 1000)]
    assert await holds.reserve(user, "USD", 1) is None


async def test_every_debit_leaves_what_open_holds_reserve(repo: Repo) -> None:
    wallet, holds = repo.uow.wallet, repo.uow.holds
    user, _ = await funded(repo, 1000)
    await holds.reserve(user, "USD", 700)
    assert await wallet.move_balance(user, "USD", -301, 0) is None
    assert [c and c.balance_minor for c in await wallet.debit_many([(user, "USD", 301, 0)])] == [
        None
    ]
    changes = await wallet.debit_many([(user, "USD", 200, 0), (user, "USD", 101, 0)])
    assert [c and c.balance_minor for c in changes] == [800, None]
    debit = await wallet.move_balance(user, "USD", -100, 0)
    assert debit is not None
    assert debit.balance_minor == 700
    assert await holds.balances(user, "USD") == [("USD", 700, 700)]
    credit = await wallet.move_balance(user, "USD", 50, 0)  # money in is always welcome
    assert credit is not None
    assert credit.balance_minor == 750


async def test_a_hold_is_stored_closed_once_and_its_reservation_ends(repo: Repo) -> None:
    holds = repo.uow.holds
    user, account = await funded(repo, 1000)
    await holds.reserve(user, "USD", 600)
    hold = a_hold(user, account, 600)
    await holds.insert(hold, "hold")
    assert await holds.get(hold.id) == hold
    assert await holds.get(hold.id, lock=True) == hold
    assert await holds.get(uuid.uuid4()) is None

    withdrawal = Transaction.withdrawal(
        uuid.uuid4(), user, account, 250, "USD", T0, description="d", reference=str(hold.id)
    )
    await repo.uow.wallet.record(withdrawal)
    after = await holds.unreserve(account, 600, 250, 800)
    assert (after.balance_minor, after.held_minor, after.crossed_below) == (750, 0, True)
    at = T0 + timedelta(minutes=1)
    closed = await holds.close(hold.id, Close(Status.CAPTURED, 250, withdrawal.id, "c"), at)
    assert closed is not None
    assert (closed.status, closed.captured_minor, closed.closed_at) == ("captured", 250, at)
    assert closed.capture_transaction_id == withdrawal.id
    assert await holds.close(hold.id, Close(Status.RELEASED), at) is None  # closed once
    assert await holds.get(hold.id) == closed


async def test_a_release_leaves_the_balance_and_its_low_flag(repo: Repo) -> None:
    holds = repo.uow.holds
    user, account = await funded(repo, 500)
    await holds.reserve(user, "USD", 300)
    released = await holds.unreserve(account, 300, 0, 10_000)
    assert (released.balance_minor, released.held_minor, released.crossed_below) == (500, 0, False)


async def test_due_holds_are_the_open_ones_past_their_expiry_oldest_first(repo: Repo) -> None:
    holds = repo.uow.holds
    user, account = await funded(repo, 1000)
    late = a_hold(user, account, 100, T0 + timedelta(seconds=2))
    early = a_hold(user, account, 100, T0 + timedelta(seconds=1))
    future = a_hold(user, account, 100, T0 + timedelta(days=1))
    done = a_hold(user, account, 100, T0)
    for hold in (late, early, future, done):
        await holds.reserve(user, "USD", 100)
        await holds.insert(hold)
    await holds.unreserve(account, 100, 0, 0)
    await holds.close(done.id, Close(Status.RELEASED), T0)
    now = T0 + timedelta(seconds=2)
    due = [h.id for h in await holds.due(now, 10) if h.user_id == user]
    assert due == [early.id, late.id]
    assert [h.id for h in await holds.due(now, 1) if h.user_id == user] in ([early.id], [])
