"""The wallet, users and idempotency repositories: the same assertions on the fake and on
PostgreSQL (see conftest.py), so the fake the handler unit tests use cannot drift."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.ledger import Transaction
from billing_worker.domain.transactions import Transition
from support.contract import Repo, as_json

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def new_user() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def a_row(user: str, account: uuid.UUID | None, **fields: object) -> TransactionRow:
    values: dict[str, object] = {
        "id": uuid.uuid4(), "user_id": user, "account_id": account, "kind": "deposit",
        "status": "created", "amount_minor": 500, "currency": "USD", "provider": "sandbox",
        "provider_ref": None, "created_at": T0, "completed_at": None, **fields,
    }  # fmt: skip
    return TransactionRow(**values)  # type: ignore[arg-type]


CREATED = [Transition(None, Status.CREATED)]


async def test_an_account_is_opened_once_with_a_zero_balance(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    first = await wallet.open_account(user, "USD")
    assert await wallet.open_account(user, "USD") == first
    assert await wallet.open_account(user, "EUR") != first
    assert await wallet.balances(user) == [("EUR", 0), ("USD", 0)]
    assert await wallet.balances(user, "USD") == [("USD", 0)]
    assert await wallet.balances(new_user()) == []


async def test_a_balance_never_goes_below_zero_and_low_is_flagged_once_per_crossing(
    repo: Repo,
) -> None:
    wallet, user = repo.uow.wallet, new_user()
    assert await wallet.move_balance(user, "USD", 100, 0) is None  # no account
    account = await wallet.open_account(user, "USD")
    credit = await wallet.move_balance(user, "USD", 2000, 1000)
    assert credit is not None
    assert (credit.account_id, credit.balance_minor, credit.crossed_below) == (account, 2000, False)
    assert await wallet.move_balance(user, "USD", -2001, 1000) is None
    at = await wallet.move_balance(user, "USD", -1000, 1000)  # at the threshold: not low
    low = await wallet.move_balance(user, "USD", -100, 1000)
    still = await wallet.move_balance(user, "USD", -100, 1000)
    crossed = [change and change.crossed_below for change in (at, low, still)]
    assert crossed == [False, True, False]
    await wallet.move_balance(user, "USD", 500, 1000)  # 1300: re-armed
    again = await wallet.move_balance(user, "USD", -1300, 1000)
    assert again is not None
    assert (again.balance_minor, again.crossed_below, again.threshold_minor) == (0, True, 1000)


async def test_debits_in_one_batch_each_see_the_ones_before_them(repo: Repo) -> None:
    wallet, user, broke = repo.uow.wallet, new_user(), new_user()
    await wallet.open_account(user, "USD")
    await wallet.move_balance(user, "USD", 500, 0)
    changes = await wallet.debit_many(
        [(user, "USD", 300, 0), (user, "USD", 300, 0), (broke, "USD", 1, 0), (user, "USD", 200, 0)]
    )
    assert [c and c.balance_minor for c in changes] == [200, None, None, 0]
    assert await wallet.balances(user) == [("USD", 0)]


async def test_transactions_are_paged_newest_first_and_filtered(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    account = await wallet.open_account(user, "USD")
    rows = [a_row(user, account, created_at=T0 + timedelta(seconds=i)) for i in range(3)]
    euro = a_row(user, None, currency="EUR", created_at=T0 + timedelta(seconds=9))
    for row in [*rows, euro]:
        await wallet.add_transaction(row, CREATED)
    page = await wallet.transactions_page(user, "USD", 2, None)
    assert page == [rows[2], rows[1]]
    last = page[-1]
    assert await wallet.transactions_page(user, "USD", 2, (last.created_at, last.id)) == [rows[0]]
    assert await wallet.transactions_page(user, None, 1, None) == [euro]


async def test_a_transaction_id_and_a_provider_reference_are_taken_once(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    await repo.uow.users.ensure(user)
    row = a_row(user, None, provider_ref="pay_1")
    await wallet.add_transaction(row, CREATED)
    async with repo.refused(asyncpg.UniqueViolationError):
        await wallet.add_transaction(row, CREATED)
    async with repo.refused(asyncpg.UniqueViolationError):
        await wallet.add_transaction(a_row(user, None, provider_ref="pay_1"), CREATED)
    async with repo.refused(asyncpg.ForeignKeyViolationError):  # a user must exist
        await wallet.add_transaction(a_row(new_user(), None), CREATED)
    async with repo.refused(asyncpg.CheckViolationError):  # completed means completed_at
        await wallet.add_transaction(a_row(user, None, status="completed"), CREATED)
    async with repo.refused(asyncpg.CheckViolationError):  # no empty transactions
        await wallet.add_transaction(a_row(user, None, amount_minor=0), CREATED)
    assert await wallet.transactions_page(user, None, 10, None) == [row]


async def test_a_recorded_transaction_is_its_row_and_is_stored_as_it(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    account = await wallet.open_account(user, "USD")
    withdrawal = Transaction.withdrawal(
        uuid.uuid4(), user, account, 300, "USD", T0, description="d", reference="r"
    )
    row = await wallet.record(withdrawal)
    assert row == a_row(
        user, account, id=withdrawal.id, kind="withdrawal", status="completed",
        amount_minor=300, provider="balance", completed_at=T0, description="d", reference="r",
    )  # fmt: skip
    assert await wallet.transactions_page(user, None, 10, None) == [row]
    async with repo.refused(asyncpg.UniqueViolationError):
        await wallet.record(withdrawal)


async def test_a_payment_starts_once_and_moves_only_from_its_current_status(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    account = await wallet.open_account(user, "USD")
    row = a_row(user, None)
    await wallet.add_transaction(row, CREATED)
    at = T0 + timedelta(minutes=1)
    started = await wallet.start_payment(row.id, "pay_2", account, at)
    assert started is not None
    assert (started.provider_ref, started.account_id) == ("pay_2", account)
    assert await wallet.start_payment(row.id, "pay_3", account, at) is None
    assert await wallet.transaction_by_ref("sandbox", "pay_2", lock=True) == started
    assert await wallet.transaction_by_ref("sandbox", "pay_3") is None
    skipped = await wallet.move_transaction(
        row.id, Transition(Status.PROCESSING, Status.COMPLETED), at
    )
    assert skipped is None
    step = Transition(Status.CREATED, Status.PROCESSING, reason="test")
    moving = await wallet.move_transaction(row.id, step, at, confirmation={"id": "pay_2"})
    assert moving is not None
    assert (moving.status, moving.completed_at, moving.provider_confirmation) == (
        "processing", None, {"id": "pay_2"})  # fmt: skip
    done = await wallet.move_transaction(
        row.id, Transition(Status.PROCESSING, Status.COMPLETED), at
    )
    assert done is not None
    assert (done.status, done.completed_at, done.provider_confirmation) == (
        "completed", at, {"id": "pay_2"})  # fmt: skip


async def test_a_failure_keeps_its_reason_and_only_a_fresh_intent_is_discarded(
    repo: Repo,
) -> None:
    wallet, user = repo.uow.wallet, new_user()
    await repo.uow.users.ensure(user)
    fresh, started = a_row(user, None), a_row(user, None)
    for row in (fresh, started):
        await wallet.add_transaction(row, CREATED)
    await wallet.start_payment(started.id, "pay_4", None, T0)
    failed = await wallet.move_transaction(
        started.id, Transition(Status.CREATED, Status.FAILED), T0,
        failure_code="card_declined", failure_message="declined",
    )  # fmt: skip
    assert failed is not None
    assert (failed.failure_code, failed.failure_message, failed.completed_at) == (
        "card_declined", "declined", None)  # fmt: skip
    await wallet.discard_created(fresh.id)
    await wallet.discard_created(started.id)
    assert await wallet.transactions_page(user, None, 10, None) == [failed]


async def test_refunds_add_up_when_completed(repo: Repo) -> None:
    wallet, user = repo.uow.wallet, new_user()
    account = await wallet.open_account(user, "USD")
    payment = a_row(user, account, status="completed", completed_at=T0)
    await wallet.add_transaction(payment, CREATED)
    assert await wallet.refunded_minor(payment.id) == 0
    for status, amount in (("completed", 120), ("completed", 30), ("created", 99)):
        done = T0 if status == "completed" else None
        refund = a_row(user, account, kind="refund", status=status, amount_minor=amount,
                       completed_at=done, refund_of=payment.id)  # fmt: skip
        await wallet.add_transaction(refund, CREATED)
    assert await wallet.refunded_minor(payment.id) == 150


async def test_a_customer_is_remembered_once_and_methods_belong_to_their_user(
    repo: Repo,
) -> None:
    users, user, other = repo.uow.users, new_user(), new_user()
    await users.ensure(user)
    await users.ensure(user)
    await users.ensure(other)
    assert await users.customer_ref(user, "stripe") is None
    cus = f"cus_{uuid.uuid4().hex}"
    assert await users.remember_customer(user, "stripe", cus) == cus
    assert await users.remember_customer(user, "stripe", "cus_other") == cus
    assert await users.customer_ref(user, "stripe") == cus
    assert await users.customer_ref(user, "yookassa") is None
    ref = f"pm-{uuid.uuid4().hex}"
    await users.save_payment_method(user, "yookassa", ref)
    await users.save_payment_method(other, "yookassa", ref)  # taken: stays the first user's
    method = await users.payment_method_of(user, "yookassa", ref)
    assert method is not None
    assert await users.payment_method_of(other, "yookassa", ref) is None
    assert await users.payment_method_of(user, "stripe", ref) is None
    subs = repo.uow.subscriptions
    assert await subs.payment_method_id("yookassa", ref) == method
    assert await subs.payment_method_ref(method) == ref
    assert await subs.payment_method_ref(uuid.uuid4()) is None


async def test_an_idempotency_record_is_written_once_and_a_claim_is_taken_once(
    repo: Repo,
) -> None:
    records, scope, key = repo.uow.idempotency, f"contract|user:{new_user()}", uuid.uuid4().hex
    assert await records.find(scope, key) is None
    await records.record(scope, key, "hash-1", {"ok": True, "data": {"n": 1}})
    found = await records.find(scope, key)
    assert found is not None
    assert (found.request_hash, as_json(found.reply)) == ("hash-1", {"ok": True, "data": {"n": 1}})
    async with repo.refused(asyncpg.UniqueViolationError):
        await records.record(scope, key, "hash-2", {"ok": False})
    assert await records.find(f"{scope}-other", key) is None
    assert await records.claim(scope, key) is False
    inbox = f"provider:contract-{uuid.uuid4().hex}"
    assert await records.claim(inbox, "evt_1") is True
    assert await records.claim(inbox, "evt_1") is False
    claimed = await records.find(inbox, "evt_1")
    assert claimed is not None
    assert (claimed.request_hash, claimed.reply) == ("", None)
