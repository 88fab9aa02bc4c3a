"""The application layer directly: concurrent duplicates of one command, without the broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from billing_contracts.wallet import Deposit, Withdraw
from billing_worker.app import Worker, build_worker, load_service_keys
from billing_worker.handlers import wallet
from billing_worker.settings import Settings

pytestmark = pytest.mark.integration


async def unstarted_worker(settings: Settings) -> Worker:
    """A worker that is not started: only its service and engine are used (the sandbox's
    callback key is loaded as start-up would)."""
    worker = build_worker(settings)
    await load_service_keys(worker.engine, worker.service.deps.gateways)
    return worker


async def test_concurrent_duplicates_of_a_command_all_get_the_first_reply_without_an_error(
    settings: Settings,
) -> None:
    worker = await unstarted_worker(settings)
    user = f"svc-{uuid.uuid4().hex[:8]}"
    try:
        funded = await worker.service.command("wallet.deposit", Deposit.model_validate(
            {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "sandbox",
             "amount": {"amount": "5.00", "currency": "USD"}}), wallet.deposit)  # fmt: skip
        assert funded["ok"]
        command = Withdraw.model_validate(
            {"idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "dup",
             "amount": {"amount": "1.00", "currency": "USD"}}
        )  # fmt: skip

        replies = await asyncio.gather(
            *(
                worker.service.command("wallet.withdraw", command, wallet.withdraw)
                for _ in range(12)
            )
        )

        assert all(reply == replies[0] for reply in replies)  # a duplicate never raises
        assert replies[0]["error"]["code"] == "insufficient_funds"  # the deposit is processing
    finally:
        await worker.engine.dispose()


async def fund(worker: object, user: str, amount: str) -> None:
    """Credit an account directly, the way a completed deposit does."""
    from billing_worker.db.engine import driver_connection
    from billing_worker.db.wallet import SqlWallet

    async with driver_connection(worker.engine) as db, db.transaction():  # type: ignore[attr-defined]
        wallet_sql = SqlWallet(db)
        await wallet_sql.open_account(user, "USD")
        await db.execute(
            "UPDATE virtual_accounts SET balance_minor = $2 WHERE user_id = $1",
            user,
            int(amount.replace(".", "")),
        )


def withdrawal(user: str, amount: str, key: str | None = None) -> Withdraw:
    return Withdraw.model_validate(
        {"idempotency_key": key or uuid.uuid4().hex, "user_id": user, "description": "batch",
         "amount": {"amount": amount, "currency": "USD"}}
    )  # fmt: skip


async def test_a_coalesced_batch_gives_each_command_its_own_outcome(settings: Settings) -> None:
    worker = await unstarted_worker(settings)
    user = f"batch-{uuid.uuid4().hex[:8]}"
    try:
        await fund(worker, user, "5.00")
        recorded = withdrawal(user, "1.00")
        first = await worker.service.command("wallet.withdraw", recorded, wallet.withdraw)
        twin_key = uuid.uuid4().hex
        batch = [
            withdrawal(user, "1.00"),  # ok -> 3.00
            recorded,  # already done: the stored reply
            withdrawal(user, "9.00"),  # refused, and it wrote nothing
            withdrawal(user, "2.00", twin_key),  # ok -> 1.00
            withdrawal(user, "2.00", twin_key),  # the same command twice in one batch
            withdrawal(user, "3.00", twin_key),  # same key, other payload
            withdrawal(user, "1.00"),  # ok -> 0.00
        ]

        replies = await worker.service.command_batch(
            "wallet.withdraw", batch, wallet.withdraw, wallet.withdraw_many
        )

        assert [r["ok"] if isinstance(r, dict) else r for r in replies] == [
            True, True, False, True, True, False, True,
        ]  # fmt: skip
        assert replies[1] == first
        assert replies[2]["error"]["code"] == "insufficient_funds"  # type: ignore[index]
        assert replies[4] == replies[3]
        assert replies[5]["error"]["code"] == "idempotency_conflict"  # type: ignore[index]
        assert [r["data"]["balance"]["amount"] for r in (replies[0], replies[3], replies[6])] == [  # type: ignore[index]
            "3.00", "1.00", "0.00",
        ]  # fmt: skip
        again = await worker.service.command("wallet.withdraw", batch[2], wallet.withdraw)
        assert again == replies[2]  # the refusal was recorded for its key too
    finally:
        await worker.engine.dispose()


async def test_one_failing_command_does_not_fail_the_rest_of_its_batch(settings: Settings) -> None:
    worker = await unstarted_worker(settings)
    user = f"batch-{uuid.uuid4().hex[:8]}"
    poison = withdrawal(user, "1.00")

    async def flaky_withdraw(command: Withdraw, uow: object, deps: object) -> object:
        if command.idempotency_key == poison.idempotency_key:
            raise RuntimeError("a bug in one command")
        return await wallet.withdraw(command, uow, deps)  # type: ignore[arg-type]

    async def flaky_many(commands: list[Withdraw], uow: object, deps: object) -> object:
        if poison in commands:
            raise RuntimeError("a bug in one command")
        return await wallet.withdraw_many(commands, uow, deps)  # type: ignore[arg-type]

    try:
        await fund(worker, user, "5.00")
        batch = [withdrawal(user, "1.00"), poison, withdrawal(user, "1.00")]

        results = await worker.service.command_batch(
            "wallet.withdraw", batch, flaky_withdraw, flaky_many
        )

        assert isinstance(results[1], RuntimeError)
        assert [results[0]["ok"], results[2]["ok"]] == [True, True]  # type: ignore[index]
        assert results[2]["data"]["balance"]["amount"] == "3.00"  # type: ignore[index]
    finally:
        await worker.engine.dispose()


async def test_concurrent_duplicates_colliding_on_a_derived_row_id_replay_the_first_reply(
    settings: Settings,
) -> None:
    worker = await unstarted_worker(settings)
    deposit = Deposit.model_validate(
        {"idempotency_key": uuid.uuid4().hex, "user_id": f"svc-{uuid.uuid4().hex[:8]}",
         "provider": "sandbox", "amount": {"amount": "2.00", "currency": "USD"}}
    )  # fmt: skip
    try:
        replies = await asyncio.gather(
            *(worker.service.command("wallet.deposit", deposit, wallet.deposit) for _ in range(12))
        )
    finally:
        await worker.engine.dispose()

    assert all(reply == replies[0] for reply in replies)  # the transaction id derives from the key
    assert replies[0]["ok"]


async def balance_minor(worker: object, user: str) -> int:
    from billing_worker.db.engine import driver_connection

    async with driver_connection(worker.engine) as db:  # type: ignore[attr-defined]
        value = await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1 AND currency = 'USD'",
            user,
        )
    return int(value or 0)


async def test_a_coalesced_batch_keeps_equal_keys_of_two_users_apart(settings: Settings) -> None:
    worker = await unstarted_worker(settings)
    first, second = (f"batch-{uuid.uuid4().hex[:8]}" for _ in range(2))
    used, shared = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        await fund(worker, first, "5.00")
        await fund(worker, second, "5.00")
        recorded = withdrawal(first, "1.00", used)
        earlier = await worker.service.command("wallet.withdraw", recorded, wallet.withdraw)
        assert earlier["ok"], earlier
        batch = [
            withdrawal(second, "2.00", used),  # the key the first user used, with another payload
            recorded,  # the first user's command again: its stored reply
            withdrawal(first, "1.00", shared),  # one new key, used by both users in one batch
            withdrawal(second, "3.00", shared),
        ]

        replies = await worker.service.command_batch(
            "wallet.withdraw", batch, wallet.withdraw, wallet.withdraw_many
        )

        assert all(isinstance(r, dict) and r["ok"] for r in replies), replies
        assert replies[1] == earlier
        amounts = [r["data"]["balance"]["amount"] for r in replies]  # type: ignore[index]
        assert amounts == ["3.00", "4.00", "3.00", "0.00"]
        ids = {r["data"]["transaction"]["id"] for r in replies}  # type: ignore[index]
        assert len(ids) == 4  # four withdrawals, four transactions: no derived id collides
        assert (await balance_minor(worker, first), await balance_minor(worker, second)) == (
            300, 0,
        )  # fmt: skip
    finally:
        await worker.engine.dispose()


async def make_legacy(worker: object, key: str) -> None:
    """Rewrite the key's record as the worker wrote it before records were scoped by user:
    the queue's scope alone."""
    from billing_worker.db.engine import driver_connection

    async with driver_connection(worker.engine) as db:  # type: ignore[attr-defined]
        moved = await db.execute(
            "UPDATE idempotency_records SET scope = 'wallet.withdraw' WHERE key = $1", key
        )
    assert moved == "UPDATE 1"


@pytest.mark.parametrize("path", ["one by one", "coalesced"])
async def test_a_legacy_unscoped_record_is_replayed_to_the_same_command_only(
    settings: Settings, path: str
) -> None:
    worker = await unstarted_worker(settings)
    owner, other = (f"legacy-{uuid.uuid4().hex[:8]}" for _ in range(2))
    legacy_key = uuid.uuid4().hex

    async def send(command: Withdraw) -> dict[str, object]:
        if path == "one by one":
            return await worker.service.command("wallet.withdraw", command, wallet.withdraw)
        padding = withdrawal(f"pad-{uuid.uuid4().hex[:8]}", "1.00")  # a batch of two
        replies = await worker.service.command_batch(
            "wallet.withdraw", [command, padding], wallet.withdraw, wallet.withdraw_many
        )
        assert isinstance(replies[0], dict)
        return replies[0]

    try:
        await fund(worker, owner, "5.00")
        await fund(worker, other, "5.00")
        command = withdrawal(owner, "2.00", legacy_key)
        first = await worker.service.command("wallet.withdraw", command, wallet.withdraw)
        assert first["ok"], first
        await make_legacy(worker, legacy_key)

        retried = await send(command)  # the same command, retried across the upgrade
        others = await send(withdrawal(other, "2.00", legacy_key))  # another hash: no conflict

        assert retried == first
        assert await balance_minor(worker, owner) == 300  # debited once
        assert others["ok"], others
        assert others["data"]["balance"]["amount"] == "3.00"  # type: ignore[index]
        assert await balance_minor(worker, other) == 300
    finally:
        await worker.engine.dispose()
