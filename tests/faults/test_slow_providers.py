"""Slow providers must not take the wallet down, and a crash between the phases of a
provider call loses nothing and makes nothing twice.

Provider calls happen outside database transactions (two phases: the intent commits,
the provider is asked holding no connection, its answer commits with the reply). With
the Stripe fake holding every answer for 15 s, 20 Stripe deposits are in flight while
200 withdrawals and balance queries on other accounts are sent: all of those are
answered before any of the deposits is. A worker SIGKILLed while the fake holds its
deposits' answers leaves intents that the reconciler (or the redelivered command)
finishes with the payments Stripe made, once each.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from billing_contracts import names
from billing_worker.app import Worker, build_worker
from billing_worker.settings import Settings
from fakes.server import serve
from fakes.stripe_api import FakeStripe
from support.figures import record
from support.invariants import check_invariants, connect
from support.load import LoadClient
from support.processes import Process, tracebacks, worker_env
from support.relay import WEBHOOK_SECRET
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SLOW_SECONDS = 15.0  # how long the Stripe fake holds each answer
SLOW_DEPOSITS = 20
FAST_COMMANDS = 200  # withdrawals and balance queries, half each
FAST_USERS = 20
FUNDING = 100_00
WITHDRAWAL = 1_00
DEPOSIT = 20_00
HOLD = 3600.0  # "never", until the test releases the answers


def money(minor: int) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "USD"}


def key() -> str:
    return uuid.uuid4().hex


def stripe_deposit(user: str, amount: int = DEPOSIT) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "amount": money(amount),
            "provider": "stripe", "payment_method_id": "pm_card_visa"}  # fmt: skip


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": round(cut[49] * 1000, 1), "p99_ms": round(cut[98] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}  # fmt: skip


@pytest.fixture
def stripe_fake() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    with serve(fake.app) as base:
        yield fake, base


def stripe_settings(base: str) -> dict[str, Any]:
    return {
        "stripe_api_key": "sk_test_billing",
        "stripe_api_base": base,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "default_provider": "sandbox",
        "provider_timeout_seconds": 120.0,  # slow, not failing: the calls wait it out
        "reconcile_after_seconds": 3600,  # the test runs the reconciler itself
    }


@pytest.fixture
def settings(database_url: str, vhost_url: str, stripe_fake: tuple[FakeStripe, str]) -> Settings:
    return make_settings(
        database_url, vhost_url, db_pool_size=16, **stripe_settings(stripe_fake[1])
    )


@pytest.fixture
async def client(vhost_url: str) -> AsyncIterator[LoadClient]:
    client = LoadClient(vhost_url)
    await client.start()  # before the worker: every event it publishes is collected
    yield client
    await client.close()


@pytest.fixture
async def worker(settings: Settings, client: LoadClient) -> AsyncIterator[Worker]:
    worker = build_worker(settings)
    async with worker.app:
        yield worker


async def answered(client: LoadClient, keys: list[str], timeout: float, what: str) -> None:
    await client.wait_until(lambda: all(client.final(k) for k in keys), timeout, what)


async def fund(client: LoadClient, users: list[str], minor: int) -> None:
    """Sandbox deposits, completed (their callbacks come through the outbox)."""
    keys = [
        await client.submit(
            names.WALLET_DEPOSIT,
            {"idempotency_key": key(), "user_id": user, "amount": money(minor)},
        )
        for user in users
    ]
    await answered(client, keys, 60, "the funding deposits' replies")
    ids = {client.final(k)["data"]["transaction"]["id"] for k in keys}  # type: ignore[index]
    await client.wait_until(
        lambda: (
            ids <= {e.body["data"]["transaction_id"] for e in client.events_of("deposit.completed")}
        ),
        60,
        "the funding deposits to complete",
    )


async def stripe_customers(client: LoadClient, users: list[str]) -> None:
    """One quick Stripe deposit each, so the user's Stripe customer exists."""
    keys = [await client.submit(names.WALLET_DEPOSIT, stripe_deposit(user)) for user in users]
    await answered(client, keys, 60, "the first Stripe deposits")
    assert all(client.final(k)["ok"] for k in keys)  # type: ignore[index]


async def test_withdrawals_and_balances_are_answered_while_20_slow_stripe_deposits_are_in_flight(
    worker: Worker, client: LoadClient, stripe_fake: tuple[FakeStripe, str], database_url: str
) -> None:
    fake, _ = stripe_fake
    run = key()[:6]
    slow_users = [f"slow-{run}-{n}" for n in range(SLOW_DEPOSITS)]
    fast_users = [f"fast-{run}-{n}" for n in range(FAST_USERS)]
    await fund(client, fast_users, FUNDING)
    await stripe_customers(client, slow_users)
    expected = {(u, "USD"): FUNDING for u in fast_users} | {(u, "USD"): DEPOSIT for u in slow_users}

    fake.delay_seconds = SLOW_SECONDS
    creates_before = len(fake.calls("POST", "/v1/payment_intents"))
    started = time.monotonic()
    slow = {}
    for user in slow_users:
        slow[await client.submit(names.WALLET_DEPOSIT, stripe_deposit(user))] = user
        expected[(user, "USD")] += DEPOSIT
    await client.wait_until(
        lambda: (
            len(fake.calls("POST", "/v1/payment_intents")) - creates_before == SLOW_DEPOSITS
            and fake.holding == SLOW_DEPOSITS
        ),
        SLOW_SECONDS / 2,
        "every slow deposit to be at Stripe",
    )
    in_flight_after = time.monotonic() - started
    checked_out: list[int] = []
    sampling = True

    async def sample() -> None:  # database connections in use while the deposits wait
        while sampling:
            checked_out.append(worker.engine.pool.checkedout())  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

    async def timed(queue: str, payload: dict[str, Any]) -> float:
        sent = time.monotonic()
        k = await client.submit(queue, payload, key=payload.get("idempotency_key") or key())
        await client.wait(k, 60)
        return time.monotonic() - sent

    commands = []
    for n in range(FAST_COMMANDS):
        user = fast_users[n % FAST_USERS]
        if n % 2 == 0:
            expected[(user, "USD")] -= WITHDRAWAL
            commands.append(
                (
                    names.WALLET_WITHDRAW,
                    {
                        "idempotency_key": key(),
                        "user_id": user,
                        "amount": money(WITHDRAWAL),
                        "description": "while Stripe is slow",
                    },
                )
            )
        else:
            commands.append((names.WALLET_BALANCE, {"user_id": user, "currency": "USD"}))
    sampler = asyncio.create_task(sample())
    fast_started = time.monotonic()
    latencies = await asyncio.gather(*(timed(queue, payload) for queue, payload in commands))
    fast_seconds = time.monotonic() - fast_started
    sampling = False
    await sampler

    # Every one of the 200 is answered while every slow deposit is still at Stripe.
    assert fake.holding == SLOW_DEPOSITS
    assert not [k for k in slow if client.replies.get(k)], "a slow deposit answered early"
    for (queue, payload), _ in zip(commands, latencies, strict=True):
        reply = client.final(payload.get("idempotency_key") or "")
        if queue == names.WALLET_WITHDRAW:
            assert reply is not None
            assert reply["ok"], reply

    await answered(client, list(slow), SLOW_SECONDS * 4, "the slow deposits")
    deposit_seconds = time.monotonic() - started
    for k in slow:
        reply = client.final(k)
        assert reply is not None
        assert reply["ok"], reply
        assert reply["data"]["transaction"]["status"] == "completed", reply
    creates = len(fake.calls("POST", "/v1/payment_intents")) - creates_before
    assert creates == SLOW_DEPOSITS  # one payment each at Stripe
    await check_invariants(database_url, client, expected_balances=expected)
    async with connect(database_url) as db:
        assert await db.fetchval("SELECT count(*) FROM provider_intents") == 0

    figures = {
        "fast_commands": FAST_COMMANDS,
        "slow_deposits_in_flight": SLOW_DEPOSITS,
        "stripe_answer_seconds": SLOW_SECONDS,
        "pool_size": worker.settings.db_pool_size,
        "connections_in_use_max": max(checked_out),
        "fast_total_seconds": round(fast_seconds, 2),
        "slow_deposits_all_at_stripe_after_seconds": round(in_flight_after, 2),
        "slow_deposits_answered_after_seconds": round(deposit_seconds, 2),
        **{f"fast_{name}": value for name, value in percentiles(list(latencies)).items()},
    }
    record("slow_providers", commands=FAST_COMMANDS + SLOW_DEPOSITS, lost=0, **figures)
    print("slow providers:", figures)


async def _reconcile(settings: Settings) -> int:
    """The reconciler of a worker that is not running (as on another replica), at once."""
    worker = build_worker(settings)
    worker.reconciler.after_seconds = 0
    try:
        return await worker.reconciler.run_once()
    finally:
        await worker.reconciler.gateways.close()
        await worker.engine.dispose()


async def test_a_sigkill_between_the_phases_of_stripe_deposits_loses_and_doubles_nothing(
    database_url: str, vhost_url: str, tmp_path: Path, stripe_fake: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_fake
    run = key()[:6]
    users = [f"kill-{run}-{n}" for n in range(10)]
    env = worker_env(database_url, vhost_url, max_deliveries=10, **stripe_settings(base))
    process = Process("run", env, tmp_path / "worker.log")
    client = LoadClient(vhost_url)
    await client.start()
    expected = {(user, "USD"): 0 for user in users}
    kills = 0
    try:
        process.start()
        await process.ready()
        await stripe_customers(client, users)
        for user in users:
            expected[(user, "USD")] += DEPOSIT

        async def held_then_killed(group: list[str]) -> list[str]:
            """Deposits whose payment Stripe made while the worker waits for the answer;
            the worker is SIGKILLed there, between its two transactions."""
            nonlocal kills
            fake.delay_seconds = HOLD
            before = len(fake.calls("POST", "/v1/payment_intents"))
            keys = []
            for user in group:
                keys.append(await client.submit(names.WALLET_DEPOSIT, stripe_deposit(user)))
                expected[(user, "USD")] += DEPOSIT
            await client.wait_until(
                lambda: len(fake.calls("POST", "/v1/payment_intents")) - before == len(group),
                30,
                "the deposits to reach Stripe",
            )
            process.kill()
            kills += 1
            fake.delay_seconds = 0  # Stripe answers now, to nobody
            async with connect(database_url) as db:
                intents = await db.fetchval(
                    "SELECT count(*) FROM provider_intents WHERE user_id = ANY($1::text[])", group
                )
                created = await db.fetchval(
                    "SELECT count(*) FROM transactions WHERE user_id = ANY($1::text[]) "
                    "AND status = 'created' AND provider_ref IS NULL",
                    group,
                )
            assert intents == created == len(group)  # committed phase one, nothing more
            assert not [k for k in keys if client.replies.get(k)]
            return keys

        settings = make_settings(database_url, vhost_url, **stripe_settings(base))
        # 1. The reconciler finishes the intents; the redelivered commands replay its reply.
        first = await held_then_killed(users[:5])
        assert await _reconcile(settings) == 5
        process.start()
        await process.ready()
        await answered(client, first, 60, "the redelivered deposits (reconciled)")
        # 2. No reconciler: the redelivered commands continue their intents themselves.
        second = await held_then_killed(users[5:])
        process.start()
        await process.ready()
        await answered(client, second, 60, "the redelivered deposits (continued)")
        assert await _reconcile(settings) == 0  # nothing left for it

        for k in first + second:
            reply = client.final(k)
            assert reply is not None
            assert reply["ok"], reply
            assert reply["data"]["transaction"]["status"] == "completed", reply
        # One PaymentIntent per deposit at Stripe: the re-issued creates were replays.
        ours = [pi for pi in fake.payment_intents.values()
                if pi["metadata"].get("user_id") in set(users)]  # fmt: skip
        assert len(ours) == 2 * len(users)
        assert len({pi["metadata"]["transaction_id"] for pi in ours}) == len(ours)
        await check_invariants(database_url, client, expected_balances=expected, redelivered=True)
        async with connect(database_url) as db:
            assert await db.fetchval("SELECT count(*) FROM provider_intents") == 0
        assert not tracebacks(process.text()), process.text()[-3000:]
        record(
            "crashes_between_phases",
            commands=len(client.sent),
            kills=kills,
            intents_reconciled=5,
            intents_continued_by_redelivery=5,
            lost=0,
        )
    finally:
        process.ensure_dead()
        await client.close()
