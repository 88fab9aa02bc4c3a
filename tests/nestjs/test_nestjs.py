"""A real NestJS service (@nestjs/microservices, pinned in tests/nestjs/package-lock.json)
against a real `billing-worker run`, with the deploy files' broker permissions and
access policy on.

The worker runs on a vhost of its own as the `billing-worker` role; the NestJS service
connects as the `storefront` role (commands, queries, events) and as `orders-service`
(its `order.created`), each user with the permissions of deploy/rabbitmq/definitions.json
and named in deploy/access-policy.toml (users renamed for this run). The scenario is
tests/nestjs/src/main.ts, which the README's NestJS section quotes; it prints what it
got back as one `RESULT {json}` line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from fakes.server import free_port
from support import broker_admin
from support.processes import Process, worker_env

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
POLICY = ROOT / "deploy" / "access-policy.toml"
ROLES = ("billing-worker", "storefront", "orders-service")


def missing(reason: str) -> None:
    """Skip where node is missing on a developer's machine; in CI that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def nestjs_build() -> Path:
    """`make nestjs`: npm ci from the lock file and tsc (a no-op when up to date)."""
    for tool in ("node", "npm", "make"):
        if shutil.which(tool) is None:
            missing(f"the NestJS test needs {tool} on PATH")
    done = subprocess.run(
        ["make", "-s", "nestjs"],  # noqa: S607
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"make nestjs failed:\n{done.stdout}\n{done.stderr}"
    return HERE / "dist" / "main.js"


@dataclass(frozen=True)
class Broker:
    urls: dict[str, str]  # role -> AMQP URL of this run's user of that role
    users: dict[str, str]  # role -> this run's user name
    policy: Path


@pytest.fixture
def broker(rabbitmq_url: str, tmp_path: Path) -> Iterator[Broker]:
    base = urlsplit(rabbitmq_url)
    if not broker_admin.local(rabbitmq_url) or not broker_admin.available():
        pytest.skip("needs to administer the broker (on its host)")
    run = uuid.uuid4().hex[:10]
    vhost = f"billing-nestjs-{run}"
    users = {role: f"{role}.nestjs-{run}" for role in ROLES}
    passwords = {role: uuid.uuid4().hex for role in ROLES}
    permissions = {p["user"]: p for p in json.loads(DEFINITIONS.read_text())["permissions"]}
    policy = tmp_path / "access-policy.toml"
    text = POLICY.read_text()
    for role in ROLES:
        text = text.replace(f'[users."{role}"]', f'[users."{users[role]}"]')
    policy.write_text(text)
    try:
        broker_admin.add_vhost(vhost)
        for role in ROLES:
            broker_admin.add_user(users[role], passwords[role])
            granted = permissions[role]
            rights = (granted["configure"], granted["write"], granted["read"])
            broker_admin.set_permissions(vhost, users[role], *rights)

        def url(role: str) -> str:
            netloc = f"{quote(users[role], safe='')}:{passwords[role]}@{base.hostname}:{base.port}"
            return urlunsplit((base.scheme, netloc, "/" + quote(vhost, safe=""), "", ""))

        yield Broker({role: url(role) for role in ROLES}, users, policy)
    finally:
        for user in users.values():
            broker_admin.delete_user(user)
        broker_admin.delete_vhost(vhost)


@pytest.fixture
async def worker(
    broker: Broker, fresh_database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Process, int]]:
    port = free_port()
    env = worker_env(fresh_database_url, broker.urls["billing-worker"],
                     access_policy=broker.policy, metrics_port=port,
                     metrics_host="127.0.0.1")  # fmt: skip
    process = Process("run", env, tmp_path / "worker.log")
    process.start()
    try:
        await process.ready()
        yield process, port
        await process.stop()
    finally:
        process.ensure_dead()


def run_nestjs(main: Path, broker: Broker, run: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ["PATH"],
        "BILLING_AMQP_URL": broker.urls["storefront"],
        "BILLING_BROKER_USER": broker.users["storefront"],
        "ORDERS_AMQP_URL": broker.urls["orders-service"],
        "ORDERS_BROKER_USER": broker.users["orders-service"],
        "EVENTS_QUEUE": f"storefront.billing-events-{run}",
        "RUN": run,
    }
    done = subprocess.run(  # noqa: S603
        ["node", str(main)],  # noqa: S607
        cwd=HERE, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    output = f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}"
    output += f"\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return dict(json.loads(line.removeprefix("RESULT ")))


def handled(port: int, queue: str, outcome: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    series = f'billing_messages_handled_seconds_count{{outcome="{outcome}",queue="{queue}"}}'
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[1])
    return 0.0


async def invoices_of_order(database_url: str, order_id: str) -> int:
    parsed = make_url(database_url)
    connection = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip
    try:
        return int(await connection.fetchval(
            "SELECT count(*) FROM invoices WHERE order_id = $1", order_id
        ))  # fmt: skip
    finally:
        await connection.close()


async def test_a_nestjs_service_calls_commands_is_refused_emits_orders_and_gets_events(
    nestjs_build: Path,
    broker: Broker,
    worker: tuple[Process, int],
    fresh_database_url: str,
) -> None:
    process, port = worker
    run = uuid.uuid4().hex[:10]
    result = await asyncio.to_thread(run_nestjs, nestjs_build, broker, run)
    user = f"nest-{run}"

    # send() resolved with the reply's data; the repeated deposit is the same transaction
    deposit, repeated = result["deposit"], result["repeated"]
    assert deposit["transaction"]["user_id"] == user
    assert deposit["transaction"]["kind"] == "deposit"
    assert deposit["transaction"]["amount"] == {"amount": "25.00", "currency": "USD"}
    assert repeated == deposit
    # @EventPattern('payment.success') fired for it
    assert result["payment"]["transaction_id"] == deposit["transaction"]["id"]
    assert result["payment"]["eventId"]
    # the query through its own queue on the default exchange
    [account] = result["balance"]["accounts"]
    assert Decimal(account["balance"]["amount"]) == Decimal("25.00")
    # refusals reject send() with the error object {code, message, details}
    assert result["withdrawal"] == {
        "code": "insufficient_funds",
        "details": {"balance": {"amount": "25.00", "currency": "USD"}},
    }
    invalid = result["invalid"]
    assert invalid["code"] == "invalid_message", invalid
    assert [e["field"] for e in invalid["details"]["errors"]] == ["idempotency_key", "amount"]
    assert result["wrongPattern"] == {
        "code": "invalid_message",
        "message": "pattern 'billing.wallet.withdraw' is not billing.wallet.balance",
        "details": {},
    }
    # the access policy: the storefront's broker user (its userId) may not upsert plans
    forbidden = result["forbidden"]
    assert forbidden["code"] == "forbidden", forbidden
    assert broker.users["storefront"] in forbidden["message"]
    # order.created emitted twice: @EventPattern('invoice.created') fired, one invoice
    order_id = f"order-{run}"
    assert result["invoice"]["order_id"] == order_id
    [invoice] = result["invoices"]["items"]
    assert invoice["order_id"] == order_id

    # Once the worker has handled both copies of the order, there is still one invoice.
    queue = "billing.orders.order-created"
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(handled, port, queue, "ok") < 2:
        assert time.monotonic() < deadline, process.text()[-3000:]
        await asyncio.sleep(0.1)
    assert await invoices_of_order(fresh_database_url, order_id) == 1
    assert await asyncio.to_thread(handled, port, queue, "invalid") == 0
    assert await asyncio.to_thread(handled, port, queue, "forbidden") == 0
