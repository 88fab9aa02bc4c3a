"""RabbitMQ and PostgreSQL restarted under load: the worker and the relay reconnect by
themselves, the relay answers 503 while the broker is away, and nothing is lost.

This restarts the machine's shared services (`rabbitmqctl stop_app` / `start_app`,
`pg_ctlcluster ... restart`), so it runs only where this process may manage them (root,
local services) and not with BILLING_TEST_NO_RESTARTS set. Whatever happens, the
services are started again in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from billing_contracts import names
from fakes.server import free_port, serve
from fakes.stripe_api import FakeStripe, sign
from support.figures import record
from support.invariants import check_invariants, connect, wait_for_settled
from support.load import LoadClient
from support.processes import Process, worker_env
from support.service_control import manageable_services

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRET = "whsec_infrastructure"
USERS = 20
FUNDING = 1000_00
BROKER_DOWN_SECONDS = 4.0


def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed service-management commands
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )


def postgres_version() -> str:
    return sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]


@contextlib.asynccontextmanager
async def broker_stopped() -> AsyncIterator[None]:
    """RabbitMQ's application stopped (connections closed, port closed), then started."""
    try:
        stopped = await asyncio.to_thread(run, "rabbitmqctl", "-q", "stop_app")
        assert stopped.returncode == 0, stopped.stderr
        yield
    finally:  # never leave it down; blocking on purpose, so not even a cancel can skip it
        run("rabbitmqctl", "-q", "start_app")
        run("rabbitmqctl", "-q", "await_startup", timeout=180)


def restart_postgres() -> None:
    version = postgres_version()
    try:
        restarted = run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
        assert restarted.returncode == 0, restarted.stderr
    finally:  # never leave it down
        if run("pg_ctlcluster", version, "main", "status").returncode != 0:
            run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")


@contextlib.asynccontextmanager
async def connections_dropped(vhost: str, seconds: float) -> AsyncIterator[None]:
    """The test's vhost only: every connection to it closed, again and again, for a while."""

    async def keep_closing() -> None:
        while True:
            await asyncio.to_thread(
                run,
                "rabbitmqctl",
                "-q",
                "close_all_connections",
                "-p",
                vhost,
                "fault test: connection dropped",
            )
            await asyncio.sleep(0.3)

    closing = asyncio.create_task(keep_closing())
    try:
        await asyncio.sleep(0.5)
        yield
        await asyncio.sleep(seconds)
    finally:
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing


async def terminate_backends(database_url: str, seconds: float) -> None:
    """The test's database only: every backend but ours terminated, again and again."""
    async with connect(database_url) as db:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.2)


def money(minor: int) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "USD"}


@pytest.fixture
def stripe_api() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    with serve(fake.app) as base:
        yield fake, base


@pytest.mark.parametrize(
    "outage",
    [
        # Restarts the machine's RabbitMQ and PostgreSQL: only alone (`serial`).
        pytest.param("restart", marks=pytest.mark.serial),
        # This test's vhost and database only: alongside other tests.
        "dropped_connections",
    ],
)
async def test_broker_and_database_outages_under_load_lose_nothing(
    database_url: str,
    vhost_url: str,
    tmp_path: Path,
    stripe_api: tuple[FakeStripe, str],
    outage: str,
) -> None:
    """`restart`: the real thing, both services restarted (see the module docstring).
    `dropped_connections`: this test's own vhost and database only - every connection
    closed, repeatedly, for a few seconds - which disturbs nobody else on the machine."""
    restart = outage == "restart"
    why_not = manageable_services() if restart else None
    if why_not:
        pytest.skip(why_not)
    fake, stripe_base = stripe_api
    rng = random.Random()
    port = free_port()
    env = worker_env(
        database_url,
        vhost_url,
        max_deliveries=12,
        retry_delays_ms="250,500,1000,2000,4000",
        stripe_api_key="sk_test_infrastructure",
        stripe_api_base=stripe_base,
        default_provider="sandbox",
        provider_timeout_seconds=5,
        reconcile_after_seconds=3600,
    )
    worker = Process("run", env, tmp_path / "worker.log")
    relay = Process(
        "relay",
        {
            **env,
            "BILLING_STRIPE_WEBHOOK_SECRET": SECRET,
            "BILLING_RELAY_HOST": "127.0.0.1",
            "BILLING_RELAY_PORT": str(port),
        },
        tmp_path / "relay.log",
    )
    relay_url = f"http://127.0.0.1:{port}"
    client = LoadClient(vhost_url)
    await client.start()
    users = [f"infra-{n}-{uuid.uuid4().hex[:6]}" for n in range(USERS)]
    expected = {(user, "USD"): FUNDING for user in users}
    webhooks: Counter[str] = Counter()  # outcome -> count
    acknowledged: set[str] = set()  # event ids the relay answered 200 for
    stripe_deposits: dict[str, str] = {}  # transaction id -> user
    tasks: set[asyncio.Task[Any]] = set()
    broker_down = asyncio.Event()
    stop_load = asyncio.Event()  # no new commands or webhooks
    stop = asyncio.Event()  # no more resending either

    async def deliver(http: httpx.AsyncClient, body: bytes) -> None:
        """A provider's webhook delivery: retried until the relay answers 2xx."""
        event_id = json.loads(body)["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                response = await http.post(
                    "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": sign(body, SECRET)},
                )
            except httpx.HTTPError:
                webhooks["connection_error"] += 1
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 200:
                acknowledged.add(event_id)
                webhooks["200"] += 1
                return
            assert response.status_code == 503, (response.status_code, response.text)
            webhooks["503_while_broker_down" if broker_down.is_set() else "503"] += 1
            await asyncio.sleep(0.5)
        raise AssertionError(f"webhook {event_id} never acknowledged")

    async def stripe_deposit(http: httpx.AsyncClient, user: str) -> None:
        amount = rng.randint(1_00, 20_00)
        command = {
            "idempotency_key": uuid.uuid4().hex,
            "user_id": user,
            "amount": money(amount),
            "provider": "stripe",
        }
        key = await client.submit(names.WALLET_DEPOSIT, command)
        reply = await client.wait(key, timeout=240)
        assert reply["ok"], reply
        transaction = reply["data"]["transaction"]
        stripe_deposits[transaction["id"]] = user
        expected[(user, "USD")] += amount
        intent = reply["data"]["payment_action"]["client_secret"].split("_secret_")[0]
        paid = fake.succeed(intent)  # the customer pays; the worker re-reads it at Stripe
        await deliver(http, fake.event("payment_intent.succeeded", paid))

    async def load(http: httpx.AsyncClient) -> None:
        """Commands and webhooks at a steady pace until told to stop."""
        tick = 0
        while not stop_load.is_set():
            user = rng.choice(users)
            amount = rng.randint(1, 10_00)
            expected[(user, "USD")] += amount
            await client.submit(
                names.WALLET_DEPOSIT,
                {"idempotency_key": uuid.uuid4().hex, "user_id": user, "amount": money(amount)},
            )
            amount = rng.randint(1, 2_00)
            expected[(user, "USD")] -= amount
            await client.submit(
                names.WALLET_WITHDRAW,
                {
                    "idempotency_key": uuid.uuid4().hex,
                    "user_id": user,
                    "amount": money(amount),
                    "description": "under restarts",
                },
            )
            if tick % 3 == 0:
                tasks.add(asyncio.create_task(stripe_deposit(http, user)))
            if tick % 2 == 0:  # an event type billing ignores: acknowledged, claimed, nothing else
                tasks.add(
                    asyncio.create_task(
                        deliver(
                            http,
                            fake.event(
                                "customer.updated",
                                {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer"},
                            ),
                        )
                    )
                )
            tick += 1
            await asyncio.sleep(0.1)

    async def answers_within(seconds: float) -> float:
        started = time.monotonic()
        reply = await client.call(names.WALLET_BALANCE, {"user_id": users[0]}, timeout=seconds)
        assert reply["ok"], reply
        return time.monotonic() - started

    timings: dict[str, float] = {}
    try:
        worker.start()
        relay.start()
        await asyncio.gather(worker.ready(), relay.ready())
        for user in users:
            await client.submit(
                names.WALLET_DEPOSIT,
                {"idempotency_key": uuid.uuid4().hex, "user_id": user, "amount": money(FUNDING)},
            )
        await client.settle(timeout=60)
        await wait_for_settled(database_url)

        async with httpx.AsyncClient(base_url=relay_url, timeout=10) as http:
            loader = asyncio.create_task(load(http))
            resender = asyncio.create_task(client.keep_resending(stop, after=10))
            await asyncio.sleep(4)

            # 1. RabbitMQ goes away (every connection closed, the port closed) and comes back.
            probe = fake.event("customer.updated", {"id": "cus_probe", "object": "customer"})
            async with contextlib.AsyncExitStack() as away:
                if restart:
                    await away.enter_async_context(broker_stopped())
                else:
                    await away.enter_async_context(
                        connections_dropped(
                            unquote(urlsplit(vhost_url).path[1:]), BROKER_DOWN_SECONDS
                        )
                    )
                broker_down.set()
                refused = await http.post(
                    "/webhooks/stripe",
                    content=probe,
                    headers={"Stripe-Signature": sign(probe, SECRET)},
                )
                health = await http.get("/healthz")
                if restart:  # with the port closed, nothing can get through
                    assert refused.status_code == 503, refused.text
                    assert refused.json()["outcome"] == "broker_unavailable"
                    assert health.status_code == 503
                    await asyncio.sleep(BROKER_DOWN_SECONDS)
                else:
                    assert refused.status_code in (200, 503), refused.text
                webhooks[f"probe_{refused.status_code}"] += 1
            broker_down.clear()
            back = time.monotonic()
            while (await http.get("/healthz")).status_code != 200:  # the relay reconnects...
                assert time.monotonic() - back < 90, "the relay never reconnected"
                await asyncio.sleep(0.5)
            timings["relay_reconnected_s"] = time.monotonic() - back
            timings["worker_answering_after_broker_s"] = await answers_within(120)
            if refused.status_code != 200:
                tasks.add(asyncio.create_task(deliver(http, probe)))  # the provider retries it
            else:
                acknowledged.add(json.loads(probe)["id"])
            await asyncio.sleep(4)

            # 2. PostgreSQL restarts (every connection terminated).
            if restart:
                await asyncio.to_thread(restart_postgres)
            else:
                await terminate_backends(database_url, 3.0)
            timings["worker_answering_after_database_s"] = await answers_within(120)
            await asyncio.sleep(4)

            stop_load.set()
            await loader
            await asyncio.wait_for(asyncio.gather(*tasks), 240)
            stop.set()
            await resender
        await client.settle(timeout=180, resend_after=10)
        assert worker.alive  # reconnected by itself: never restarted
        assert relay.alive
        assert worker.starts == relay.starts == 1

        # Every webhook the relay acknowledged reached the worker: claimed (applied or
        # ignored) or, had it been unprocessable, dead-lettered - never dropped.
        async with connect(database_url) as db:
            deadline = time.monotonic() + 120
            while True:
                claimed = {
                    r["key"]
                    for r in await db.fetch(
                        "SELECT key FROM idempotency_records WHERE scope = 'provider:stripe'"
                    )
                }
                dead = {d.message_id for d in client.dead_letters}
                completed = {
                    str(r["id"])
                    for r in await db.fetch(
                        "SELECT id FROM transactions WHERE provider = 'stripe' "
                        "AND status = 'completed'"
                    )
                }
                lost = acknowledged - claimed - dead
                waiting = set(stripe_deposits) - completed
                if not lost and not waiting:
                    break
                assert time.monotonic() < deadline, (
                    f"{len(lost)} acknowledged webhooks never reached the worker, "
                    f"{len(waiting)} stripe deposits never completed"
                )
                await asyncio.sleep(0.5)
        await check_invariants(
            database_url, client, expected_balances=expected, events_timeout=120, redelivered=True
        )
        assert await relay.stop() == 0
        assert await worker.stop() == 0
    finally:
        stop_load.set()
        stop.set()
        for task in tasks:
            task.cancel()
        worker.ensure_dead()
        relay.ensure_dead()
        await client.close()

    record(
        "infrastructure" if restart else "dropped_connections",
        commands=len(client.sent),
        broker_restarts=int(restart),
        database_restarts=int(restart),
        webhooks_acknowledged=len(acknowledged),
        webhooks_answered_503=webhooks["503"]
        + webhooks["503_while_broker_down"]
        + webhooks["probe_503"],
        stripe_deposits_completed=len(stripe_deposits),
        client_resent=client.resent,
        client_reconnects=client.reconnects,
        lost=0,
        **{name: round(value, 2) for name, value in timings.items()},
    )
