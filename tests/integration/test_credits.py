"""Admin credits against the real broker: refused without the admin role or without a
policy (unless the development setting opens it), granted with it, `granted_by` the
broker-validated AMQP user id (the typed client sets it to its login, here `guest`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from billing_contracts import names
from billing_contracts.client import BillingClient, Forbidden
from billing_contracts.money import Money
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from support.contract import as_json
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration


def new_user() -> str:
    return f"credit-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def running(database_url: str, rabbitmq_url: str, **settings: Any) -> AsyncIterator[Worker]:
    worker = build_worker(make_settings(database_url, rabbitmq_url, **settings))
    async with worker.app:
        yield worker


async def grant(rabbitmq_url: str, user: str, amount: str = "12.50") -> Any:
    async with BillingClient(rabbitmq_url, timeout=30) as billing:
        return await billing.credit(
            user_id=user, amount=Money(amount=amount, currency="USD"),
            reason="sorry for the outage", idempotency_key=uuid.uuid4().hex,
        )  # fmt: skip


async def stored(worker: Worker, user: str) -> list[dict[str, Any]]:
    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT t.kind, t.status, t.amount_minor, t.provider, t.metadata, a.balance_minor "
            "FROM transactions t JOIN virtual_accounts a ON a.id = t.account_id "
            "WHERE t.user_id = $1",
            user,
        )
    return [{**dict(row), "metadata": as_json(row["metadata"])} for row in rows]


def login(rabbitmq_url: str) -> str:
    return urlsplit(rabbitmq_url).username or "guest"


async def test_without_a_policy_a_credit_is_forbidden_and_dead_lettered(
    database_url: str, rabbitmq_url: str
) -> None:
    user = new_user()
    async with running(database_url, rabbitmq_url) as worker:
        bus = Bus(rabbitmq_url)
        await bus.start()
        try:
            with pytest.raises(Forbidden) as refused:
                await grant(rabbitmq_url, user)
            assert "BILLING_ACCESS_POLICY" in refused.value.message
            letters = await bus.dead_letters.wait_for(
                lambda m: (
                    (m.headers or {}).get(names.ORIGINAL_QUEUE_HEADER) == names.WALLET_CREDIT
                    and user.encode() in m.body
                )
            )
            reason = str(letters[0].headers[names.REASON_HEADER])
            assert reason.startswith("forbidden: ")
        finally:
            await bus.close()
        assert await stored(worker, user) == []


async def test_the_development_setting_opens_credits_and_records_who_granted_them(
    database_url: str, rabbitmq_url: str
) -> None:
    user = new_user()
    async with running(database_url, rabbitmq_url, credit_without_policy=True) as worker:
        bus = Bus(rabbitmq_url)
        await bus.start()
        try:
            result = await grant(rabbitmq_url, user)
            event = await bus.event("credit.granted", lambda d: d["user_id"] == user)
        finally:
            await bus.close()
    assert (result.transaction.kind, result.balance.amount) == ("credit", "12.50")
    assert event["data"]["granted_by"] == login(rabbitmq_url)
    assert await stored(worker, user) == [
        {"kind": "credit", "status": "completed", "amount_minor": 1250, "provider": "balance",
         "metadata": {"granted_by": login(rabbitmq_url), "reason": "sorry for the outage"},
         "balance_minor": 1250}
    ]  # fmt: skip


def policy(tmp_path: Path, user: str, allow: list[str]) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f'[users."{user}"]\nallow = {json.dumps(allow)}\n')
    return path


async def test_with_a_policy_only_the_user_named_for_credits_may_grant_one(
    database_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    """The sender here is also the worker's own user: no exception for it, and a
    wildcard over the wallet queues does not reach the credit queue."""
    me, user = login(rabbitmq_url), new_user()
    wildcard = policy(tmp_path, me, ["billing.wallet.*"])
    async with running(database_url, rabbitmq_url, access_policy=wildcard) as worker:
        with pytest.raises(Forbidden) as refused:
            await grant(rabbitmq_url, user)
        assert refused.value.message == f"broker user {me!r} may not send to {names.WALLET_CREDIT}"
        assert await stored(worker, user) == []
    exact = policy(tmp_path, me, ["billing.wallet.*", names.WALLET_CREDIT])
    async with running(database_url, rabbitmq_url, access_policy=exact) as worker:
        result = await grant(rabbitmq_url, user, "3.00")
        assert result.balance.amount == "3.00"
        [row] = await stored(worker, user)
        assert row["metadata"]["granted_by"] == me
