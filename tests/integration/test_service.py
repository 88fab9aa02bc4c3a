"""The application layer directly: concurrent duplicates of one command, without the broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from billing_contracts.wallet import Deposit, Withdraw
from billing_worker.app import build_worker
from billing_worker.handlers import wallet
from billing_worker.settings import Settings

pytestmark = pytest.mark.integration


async def test_concurrent_duplicates_of_a_command_all_get_the_first_reply_without_an_error(
    settings: Settings,
) -> None:
    worker = build_worker(settings)  # not started: only its service and engine are used
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
    worker = build_worker(settings)
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
    worker = build_worker(settings)
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
    worker = build_worker(settings)
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
