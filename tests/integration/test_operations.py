"""What an operator sees and does: metrics, health, the DLQ tools, the audit."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.settings import Settings
from fakes.server import free_port
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url  # the audit judges the whole database: keep it to this test


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    return make_settings(database_url, rabbitmq_url, metrics_port=free_port(),
                         metrics_host="127.0.0.1")  # fmt: skip


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"BILLING_DATABASE_URL": settings.database_dsn, "BILLING_RABBITMQ_URL": settings.amqp_url,
           "BILLING_SANDBOX_ENABLED": str(settings.sandbox_enabled).lower(),
           "PATH": "/usr/bin:/bin", **extra}  # fmt: skip
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "billing_worker", *args], env=env, capture_output=True,
        text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip


async def deposit(bus: Bus, user: str, amount: str) -> None:
    reply = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": uuid.uuid4().hex, "user_id": user,
         "amount": {"amount": amount, "currency": "USD"}},
    )  # fmt: skip
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def test_metrics_show_the_messages_payments_transitions_and_dead_letters(
    bus: Bus, worker: Worker, settings: Settings
) -> None:
    user = f"ops-{uuid.uuid4().hex[:8]}"
    await deposit(bus, user, "20.00")
    ok = await bus.call("billing.wallet.withdraw", {"idempotency_key": uuid.uuid4().hex,
                        "user_id": user, "amount": {"amount": "15.00", "currency": "USD"},
                        "description": "x"})  # fmt: skip
    assert ok["ok"]
    await bus.call("billing.wallet.withdraw", b"{broken")
    await asyncio.sleep(1.5)  # the outbox lag is measured on the publisher's poll
    assert settings.metrics_port is not None

    status, text = await asyncio.to_thread(scrape, settings.metrics_port)

    assert status == 200
    assert sample(text, "billing_messages_handled_seconds_count",
                  queue="billing.wallet.withdraw", outcome="ok") >= 1  # fmt: skip
    assert sample(text, "billing_messages_handled_seconds_count",
                  queue="billing.wallet.withdraw", outcome="invalid") >= 1  # fmt: skip
    assert sample(text, "billing_payments_total", provider="sandbox", outcome="succeeded") >= 1
    assert sample(text, "billing_transaction_transitions_total", kind="withdrawal",
                  from_status="processing", to_status="completed") >= 1  # fmt: skip
    assert sample(text, "billing_dead_letters_total", queue="billing.wallet.withdraw",
                  reason="invalid_message") >= 1  # fmt: skip
    assert sample(text, "billing_balance_alerts_total", currency="USD") >= 1
    assert sample(text, "billing_outbox_published_total") >= 5
    assert "billing_outbox_lag_seconds" in text
    assert "faststream_received_messages_total" in text  # FastStream's own per-queue series
    status, body = await asyncio.to_thread(scrape, settings.metrics_port, "/healthz")
    health = json.loads(body)
    assert status == 200
    assert {"broker": "up", "database": "up"}.items() <= health.items()
    # and every part the watchdog keeps an eye on: jobs, the outbox, each consumer
    assert {"outbox_publisher", "reconciler", "renewals", "retention"} <= health.keys()
    assert set(health.values()) == {"up"}, health


async def test_audit_passes_on_a_healthy_ledger_and_catches_a_corrupted_balance(
    bus: Bus, worker: Worker, settings: Settings
) -> None:
    user = f"ops-{uuid.uuid4().hex[:8]}"
    await deposit(bus, user, "10.00")
    assert (await asyncio.to_thread(cli, settings, "audit")).returncode == 0
    # The same ledger judged as a production worker's: the sandbox deposit is money nobody paid.
    production = await asyncio.to_thread(cli, settings, "audit", BILLING_SANDBOX_ENABLED="false")
    assert production.returncode == 1
    assert "FAIL sandbox money on a worker without the sandbox" in production.stdout
    assert user in production.stdout

    async with driver_connection(worker.engine) as db:
        await db.execute(
            "UPDATE virtual_accounts SET balance_minor = balance_minor + 1 WHERE user_id = $1", user
        )
    result = await asyncio.to_thread(cli, settings, "audit")

    assert result.returncode == 1
    assert "balance differs from the sum of its completed transactions" in result.stdout
    assert user in result.stdout
    assert '"balance_minor": 1001' in result.stdout


class Flaky:
    """A provider that times out until told to recover."""

    def __init__(self) -> None:
        self.down = True


@pytest.fixture
async def flaky_worker(settings: Settings) -> AsyncIterator[tuple[Worker, Flaky]]:
    from billing_worker.app import build_gateways
    from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
    from billing_worker.providers.sandbox import SandboxGateway

    switch = Flaky()

    class Recovering(SandboxGateway):
        async def create_payment(self, request: PaymentRequest) -> PaymentResult:
            if switch.down:
                raise ConnectionError("provider timed out")
            return await super().create_payment(request)

    gateways = Gateways({"sandbox": Recovering()}, default="sandbox")
    assert build_gateways  # the real ones are not needed here
    fast = settings.model_copy(update={"max_deliveries": 2})
    worker = build_worker(fast, gateways=gateways)
    async with worker.app:
        yield worker, switch


async def test_a_dead_letter_replayed_after_the_fault_is_fixed_is_processed(
    flaky_worker: tuple[Worker, Flaky], rabbitmq_url: str, settings: Settings
) -> None:
    _, switch = flaky_worker
    bus = Bus(rabbitmq_url, tap_dead_letters=False)  # leave the DLQ to the CLI
    await bus.start()
    try:
        user = f"ops-{uuid.uuid4().hex[:8]}"
        command: dict[str, Any] = {"idempotency_key": uuid.uuid4().hex, "user_id": user,
                                   "amount": {"amount": "3.00", "currency": "USD"}}  # fmt: skip
        first = await bus.call("billing.wallet.deposit", command)
        assert first["error"]["code"] == "internal_error"  # tried twice, dead-lettered
        listed = await asyncio.to_thread(cli, settings, "dlq", "list")
        mine = [e for e in json.loads(listed.stdout) if e["queue"] == "billing.wallet.deposit"]
        assert mine, listed.stdout
        assert mine[-1]["reason"].startswith("failed 2 times: ConnectionError")
        shown = await asyncio.to_thread(cli, settings, "dlq", "show", "--position",
                                        str(mine[-1]["position"]))  # fmt: skip
        assert json.loads(shown.stdout)[0]["body"]["user_id"] == user

        switch.down = False
        replayed = await asyncio.to_thread(cli, settings, "dlq", "replay", "--queue",
                                           "billing.wallet.deposit")  # fmt: skip

        assert replayed.returncode == 0, replayed.stderr
        assert "replayed" in replayed.stderr
        await bus.event("deposit.completed", lambda d: d["user_id"] == user)
        balance = await bus.call("billing.wallet.balance", {"user_id": user})
        assert balance["data"]["accounts"][0]["balance"]["amount"] == "3.00"
        again = await asyncio.to_thread(cli, settings, "dlq", "list")
        assert user not in again.stdout
    finally:
        await bus.close()


async def test_outbox_status_and_purge_need_no_worker(settings: Settings, worker: Worker) -> None:
    status = await asyncio.to_thread(cli, settings, "outbox", "status")
    assert status.returncode == 0
    assert "unpublished" in json.loads(status.stdout)
    refused = await asyncio.to_thread(cli, settings, "dlq", "purge")
    assert refused.returncode == 2
    purged = await asyncio.to_thread(cli, settings, "dlq", "purge", "--yes")
    assert purged.returncode == 0
    assert purged.stdout.startswith("purged ")
