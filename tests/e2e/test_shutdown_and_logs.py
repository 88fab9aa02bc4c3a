"""Real worker processes: SIGTERM mid-burst loses and doubles nothing; logs keep secrets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url


def start_worker(log: Path, **env: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    with log.open("ab") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "billing_worker", "run"],
            env={**clean, "BILLING_LOG_FORMAT": "json", **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd="/",
        )


async def wait_for_line(
    log: Path, text: str, process: subprocess.Popen[bytes], times: int = 1
) -> None:
    """Until `text` stands in the log `times` times (workers of one test share a log)."""
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count(text) < times:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{text!r} never logged"
        await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(process.wait, 90)


async def test_sigterm_during_a_burst_of_1000_commands_loses_none_and_doubles_none(
    database_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    # One withdrawal per transaction and a small prefetch: the burst takes the worker
    # seconds, not the fraction of one that coalescing needs, so the signal lands mid-burst
    # however fast the machine is.
    env = {"BILLING_DATABASE_URL": database_url, "BILLING_RABBITMQ_URL": rabbitmq_url,
           "BILLING_SANDBOX_ENABLED": "true", "BILLING_COALESCE_MAX": "1",
           "BILLING_PREFETCH": "4"}  # fmt: skip
    log = tmp_path / "worker.log"
    first = start_worker(log, **env)
    await wait_for_line(log, "billing worker consuming", first)
    bus = Bus(rabbitmq_url)
    await bus.start()
    try:
        user = f"burst-{uuid.uuid4().hex[:8]}"
        funded = await bus.call(
            "billing.wallet.deposit",
            {"idempotency_key": uuid.uuid4().hex, "user_id": user,
             "amount": {"amount": "20.00", "currency": "USD"}},
        )  # fmt: skip
        funding = funded["data"]["transaction"]["id"]
        await bus.event("deposit.completed", lambda d: d["transaction_id"] == funding)
        replies = bus.reply_counts
        keys = [uuid.uuid4().hex for _ in range(1000)]
        command = {"user_id": user, "description": "burst",
                   "amount": {"amount": "0.01", "currency": "USD"}}  # fmt: skip
        for key in keys:
            await bus.send("billing.wallet.withdraw", {"idempotency_key": key, **command},
                           reply=True, correlation_id=key)  # fmt: skip
        while sum(replies[key] for key in keys) < 200:
            await asyncio.sleep(0.01)

        assert await stop(first) == 0  # graceful: in-flight messages finished and acked
        done_by_first = sum(1 for key in keys if replies[key])
        second = start_worker(log, **env)
        # Ready (its signal handlers set) before anything can stop it, even when the first
        # worker left nothing for it to do.
        await wait_for_line(log, "billing worker consuming", second, times=2)
        deadline = time.monotonic() + 120
        while any(not replies[key] for key in keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await stop(second) == 0
    finally:
        await bus.close()

    assert 200 <= done_by_first < len(keys)  # the signal really came mid-burst
    assert all(replies[key] for key in keys)  # nothing lost
    assert max(replies[key] for key in keys) == 1  # nothing answered twice
    parsed = make_url(database_url)
    db = await asyncpg.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                               database=parsed.database)  # fmt: skip
    try:
        applied = await db.fetchval(
            "SELECT count(*) FROM transactions WHERE user_id = $1 AND kind = 'withdrawal'", user
        )
        balance = await db.fetchval(
            "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1", user
        )
    finally:
        await db.close()
    assert applied == 1000  # nothing applied twice
    assert balance == 1000  # 20.00 - 1000 x 0.01


async def test_logs_never_contain_a_configured_secret(
    database_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    secrets = {
        "BILLING_STRIPE_API_KEY": "sk_test_leak_me_4242",
        "BILLING_STRIPE_WEBHOOK_SECRET": "whsec_leak_me_4242",
        "BILLING_YOOKASSA_SECRET_KEY": "yk_leak_me_4242",
    }
    with_password = make_url(database_url).set(password="pw_leak_me_4242")
    env = {
        **secrets,
        "BILLING_YOOKASSA_ACCOUNT_ID": "123",
        "BILLING_STRIPE_API_BASE": "http://127.0.0.1:9",  # unreachable: errors get logged
        "BILLING_DATABASE_URL": with_password.render_as_string(hide_password=False),
        "BILLING_RABBITMQ_URL": rabbitmq_url,
        "BILLING_LOG_LEVEL": "DEBUG",
        "BILLING_MAX_DELIVERIES": "2",
        "BILLING_RETRY_DELAYS_MS": "50",
        "BILLING_PROVIDER_TIMEOUT_SECONDS": "1",
    }
    log = tmp_path / "worker.log"
    process = start_worker(log, **env)
    await wait_for_line(log, "billing worker consuming", process)
    bus = Bus(rabbitmq_url)
    await bus.start()
    try:
        reply = await bus.call("billing.wallet.deposit", {
            "idempotency_key": uuid.uuid4().hex, "user_id": "leaky", "provider": "stripe",
            "amount": {"amount": "1.00", "currency": "USD"}}, timeout=60)  # fmt: skip
        assert reply["error"]["code"] == "internal_error"  # Stripe unreachable, retried, given up
        await bus.call("billing.wallet.balance", {"user_id": "leaky"})
    finally:
        await bus.close()
        assert await stop(process) == 0

    text = log.read_text(errors="replace")
    assert "Stripe unavailable" in text  # the failure was logged...
    for secret in [*secrets.values(), "pw_leak_me_4242"]:
        assert secret not in text  # ...without the secrets
