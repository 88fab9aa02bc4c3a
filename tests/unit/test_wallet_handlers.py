"""The wallet handlers' rules on the fake unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import asyncpg
import pytest

from billing_contracts import events as ev
from billing_contracts.wallet import Deposit, GetBalance, ListTransactions
from billing_worker.domain.errors import InsufficientFunds, InvalidInput, NotFound, ProviderError
from billing_worker.handlers import wallet
from billing_worker.handlers.deps import Deps
from billing_worker.providers.base import Notification, PaymentResult, PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import (
    balance_of,
    deposit,
    key,
    make_deps,
    money,
    new_user,
    run,
    wire,
    withdrawal,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="10")


def a_deposit(user: str, amount: str = "25.00", **extra: str) -> Deposit:
    return Deposit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money(amount), **extra}
    )


async def test_phase_one_of_a_deposit_writes_a_created_transaction_and_moves_no_money(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    intent = await run(db, wallet.deposit, a_deposit(user, "25.00"), deps)
    row = db.state.transactions[intent.id]
    assert (row.status, row.amount_minor, row.currency, row.account_id) == (
        "created",
        2500,
        "USD",
        None,
    )
    assert intent.request["amount_minor"] == 2500
    assert await balance_of(db, user) is None
    assert db.events == []


async def test_a_succeeded_deposit_completes_credits_the_balance_and_announces_it(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    result = await deposit(db, deps, user, "25.00")
    assert result.transaction.status == "completed"
    assert await balance_of(db, user) == 2500
    assert [e.type for e in db.events] == [ev.PAYMENT_SUCCESS, ev.DEPOSIT_COMPLETED]
    assert db.events_of(ev.DEPOSIT_COMPLETED)[0]["balance"] == money("25.00")


async def test_a_failed_deposit_credits_nothing_and_announces_the_failure(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    result = await deposit(db, deps, user, "25.00", status=PaymentStatus.FAILED)
    assert result.transaction.status == "failed"
    assert await balance_of(db, user) == 0  # the account is opened, nothing is credited
    assert [e.type for e in db.events] == [ev.PAYMENT_FAILED]


async def test_a_pending_deposit_waits_processing_and_its_callback_is_delivered_later(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    intent = await run(db, wallet.deposit, a_deposit(user), deps)
    callback = Notification("evt_1", b"{}")
    answer = PaymentResult("pay_1", PaymentStatus.PENDING, notifications=(callback,))
    async with db.transaction() as uow:
        await wallet.finish_deposit(intent, wallet.Charged(answer), uow, deps)
    assert db.state.transactions[intent.id].status == "processing"
    assert db.state.transactions[intent.id].provider_ref == "pay_1"
    assert await balance_of(db, user) == 0
    assert db.events == []
    assert db.deliveries == [("sandbox", callback)]


async def test_a_deposit_the_provider_refused_outright_is_undone(
    db: FakeDatabase, deps: Deps
) -> None:
    intent = await run(db, wallet.deposit, a_deposit(new_user()), deps)
    async with db.transaction() as uow:
        await wallet.undo_deposit(intent, uow)
    assert intent.id not in db.state.transactions


async def test_a_deposit_through_a_provider_not_configured_is_a_provider_error(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    with pytest.raises(ProviderError):
        await run(db, wallet.deposit, a_deposit(user, provider="stripe"), deps)
    assert db.state.transactions == {}
    assert user not in db.state.users


async def test_a_yookassa_method_saved_for_another_user_is_not_found(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, thief = new_user(), new_user()
    async with db.transaction() as uow:
        await uow.users.ensure(owner)
        await uow.users.save_payment_method(owner, "yookassa", "pm-owned")
    stolen = a_deposit(thief, provider="yookassa", payment_method_id="pm-owned")
    with pytest.raises(NotFound) as refused:
        await run(db, wallet.deposit, stolen, deps)
    unknown = a_deposit(thief, provider="yookassa", payment_method_id="pm-unknown")
    with pytest.raises(NotFound) as missing:
        await run(db, wallet.deposit, unknown, deps)
    assert str(refused.value).replace("pm-owned", "?") == str(missing.value).replace(
        "pm-unknown", "?"
    )
    assert db.state.transactions == {}
    own = a_deposit(owner, provider="yookassa", payment_method_id="pm-owned")
    assert (await run(db, wallet.deposit, own, deps)).provider == "yookassa"


async def test_a_withdrawal_debits_the_balance_and_announces_it(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "30.00")
    result = await run(db, wallet.withdraw, withdrawal(user, "12.50", reference="ord-1"), deps)
    assert result.balance == wire("17.50")
    assert (result.transaction.kind, result.transaction.status) == ("withdrawal", "completed")
    assert await balance_of(db, user) == 1750
    [event] = db.events_of(ev.WITHDRAWAL_COMPLETED)
    assert (event["amount"], event["balance"], event["reference"]) == (
        money("12.50"),
        money("17.50"),
        "ord-1",
    )


async def test_a_withdrawal_beyond_the_balance_is_insufficient_funds_and_changes_nothing(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "10.00")
    before = (dict(db.state.transactions), len(db.events))
    with pytest.raises(InsufficientFunds) as refused:
        await run(db, wallet.withdraw, withdrawal(user, "10.01"), deps)
    assert refused.value.details["balance"] == money("10.00")
    assert await balance_of(db, user) == 1000
    assert (dict(db.state.transactions), len(db.events)) == before


async def test_the_whole_balance_can_be_withdrawn(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await deposit(db, deps, user, "10.00")
    assert (await run(db, wallet.withdraw, withdrawal(user, "10.00"), deps)).balance == wire("0.00")


async def test_a_withdrawal_from_a_user_without_an_account_is_insufficient_funds(
    db: FakeDatabase, deps: Deps
) -> None:
    with pytest.raises(InsufficientFunds) as refused:
        await run(db, wallet.withdraw, withdrawal(new_user(), "1.00"), deps)
    assert refused.value.details["balance"] == money("0.00")


async def test_withdrawals_in_one_batch_each_see_the_ones_before_them(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "5.00")
    batch = [withdrawal(user, "3.00"), withdrawal(user, "3.00"), withdrawal(user, "2.00")]
    async with db.transaction() as uow:
        outcomes = await wallet.withdraw_many(batch, uow, deps)
    assert [type(o).__name__ for o in outcomes] == [
        "WithdrawResult",
        "InsufficientFunds",
        "WithdrawResult",
    ]
    assert await balance_of(db, user) == 0
    assert len(db.events_of(ev.WITHDRAWAL_COMPLETED)) == 2


async def test_a_withdrawal_in_another_currency_does_not_touch_this_one(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00", "USD")
    with pytest.raises(InsufficientFunds):
        await run(db, wallet.withdraw, withdrawal(user, "1.00", "EUR"), deps)
    assert await balance_of(db, user, "USD") == 5000


async def test_balance_low_is_sent_once_per_crossing_and_re_armed_above_the_threshold(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "20.00")
    await run(db, wallet.withdraw, withdrawal(user, "11.00"), deps)  # 9.00 < 10: crossed
    await run(db, wallet.withdraw, withdrawal(user, "1.00"), deps)  # still low: no repeat
    assert [e["balance"] for e in db.events_of(ev.BALANCE_LOW)] == [money("9.00")]
    await deposit(db, deps, user, "5.00")  # 13.00: re-armed
    await run(db, wallet.withdraw, withdrawal(user, "4.00"), deps)  # 9.00 again
    assert [e["balance"] for e in db.events_of(ev.BALANCE_LOW)] == [money("9.00")] * 2


async def test_a_second_withdrawal_with_the_same_key_names_the_same_transaction(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "20.00")
    command = withdrawal(user, "1.00")
    await run(db, wallet.withdraw, command, deps)
    with pytest.raises(asyncpg.UniqueViolationError):  # the service replays the record instead
        await run(db, wallet.withdraw, command, deps)
    assert await balance_of(db, user) == 1900


async def test_balances_are_kept_per_currency_and_filtered(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await deposit(db, deps, user, "1.50", "USD")
    await deposit(db, deps, user, "1000", "JPY")
    every = await run(db, wallet.get_balance, GetBalance(user_id=user), deps)
    assert [(a.currency, a.balance) for a in every.accounts] == [
        ("JPY", wire("1000", "JPY")),
        ("USD", wire("1.50")),
    ]
    usd = await run(db, wallet.get_balance, GetBalance(user_id=user, currency="USD"), deps)
    assert [a.currency for a in usd.accounts] == ["USD"]
    assert (await run(db, wallet.get_balance, GetBalance(user_id=new_user()), deps)).accounts == []


async def test_transactions_are_paged_newest_first_with_a_cursor(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "10.00")
    for amount in ("1.00", "2.00", "3.00"):
        clock.advance(seconds=1)
        await run(db, wallet.withdraw, withdrawal(user, amount), deps)
    first = await run(db, wallet.list_transactions, ListTransactions(user_id=user, limit=2), deps)
    assert [t.amount.amount for t in first.items] == ["3.00", "2.00"]
    assert first.next_cursor is not None
    query = ListTransactions(user_id=user, limit=2, cursor=first.next_cursor)
    rest = await run(db, wallet.list_transactions, query, deps)
    assert [t.amount.amount for t in rest.items] == ["1.00", "10.00"]
    assert rest.next_cursor is None
    other = await run(db, wallet.list_transactions, ListTransactions(user_id=new_user()), deps)
    assert other.items == []


async def test_a_forged_cursor_is_invalid_input(db: FakeDatabase, deps: Deps) -> None:
    query = ListTransactions(user_id=new_user(), cursor="not-a-cursor")
    with pytest.raises(InvalidInput):
        await run(db, wallet.list_transactions, query, deps)
