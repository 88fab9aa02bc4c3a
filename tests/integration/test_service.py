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
