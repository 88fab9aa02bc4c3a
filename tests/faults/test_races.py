"""Races: many commands on one account, a withdrawal against a deposit's completion, a
renewal against a cancel, and one provider event or one command delivered to two workers
at once. Two in-process workers compete for the queues in each."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts import names
from billing_worker.app import Worker, build_gateways, build_worker
from billing_worker.domain.events import ProviderEvent
from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.figures import record
from support.invariants import check_invariants, connect
from support.load import LoadClient
from support.sandbox import signed
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

START = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


class HeldGateway(SandboxGateway):
    """A provider whose callback the test delivers itself, when (and as often as) it likes.

    It speaks the sandbox's event format under the name `stripe`, and keeps each payment's
    callback instead of sending it.
    """

    name = "stripe"

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: dict[str, bytes] = {}  # transaction id -> callback body

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        result = await super().create_payment(request)
        self.callbacks[str(request.transaction_id)] = result.notifications[0].body
        return dataclasses.replace(result, notifications=())

    def headers(self, body: bytes) -> dict[str, str]:
        """What the callback carries when delivered: its name and the worker's signature."""
        return signed(self, body, provider=self.name)

    def parse_event(self, body: bytes) -> ProviderEvent:
        return dataclasses.replace(super().parse_event(body), provider=self.name)


def money(minor: int) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "USD"}


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def held() -> HeldGateway:
    return HeldGateway()


@pytest.fixture
def settings(database_url: str, vhost_url: str) -> Settings:
    return make_settings(
        database_url,
        vhost_url,
        renewal_interval_seconds=3600,
        reconcile_interval_seconds=3600,
        db_pool_size=8,
    )


@pytest.fixture
async def client(vhost_url: str) -> AsyncIterator[LoadClient]:
    client = LoadClient(vhost_url)
    await client.start()  # before the workers: every event they publish is collected
    yield client
    await client.close()


@pytest.fixture
async def workers(
    settings: Settings, clock: ManualClock, held: HeldGateway, client: LoadClient
) -> AsyncIterator[list[Worker]]:
    """Two workers on the same database and queues, as two replicas would be."""
    built = []
    for _ in range(2):
        sandbox = build_gateways(settings).get("sandbox")
        gateways = Gateways({"sandbox": sandbox, "stripe": held}, default="sandbox")
        built.append(build_worker(settings, clock=clock, gateways=gateways))
    async with built[0].app, built[1].app:
        yield built


async def fund(client: LoadClient, users: list[str], minor: int) -> None:
    keys = [
        await client.submit(
            names.WALLET_DEPOSIT,
            {"idempotency_key": key(), "user_id": user, "amount": money(minor)},
        )
        for user in users
    ]
    await client.settle(timeout=60)
    assert all(client.final(k)["ok"] for k in keys)  # type: ignore[index]
    ids = {client.final(k)["data"]["transaction"]["id"] for k in keys}  # type: ignore[index]
    await client.wait_until(
        lambda: (
            ids <= {e.body["data"]["transaction_id"] for e in client.events_of("deposit.completed")}
        ),
        60,
        "the funding deposits to complete",
    )


async def test_500_concurrent_withdrawals_on_one_account_never_overdraw_or_lose_an_update(
    workers: list[Worker], client: LoadClient, database_url: str
) -> None:
    user = f"race-one-account-{key()[:6]}"
    await fund(client, [user], 300_00)

    keys = await asyncio.gather(
        *(
            client.submit(
                names.WALLET_WITHDRAW,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "amount": money(1_00),
                    "description": "race",
                },
            )
            for _ in range(500)
        )
    )
    await client.settle(timeout=120)

    replies = [client.final(k) for k in keys]
    ok = [r for r in replies if r and r["ok"]]
    refused = [r for r in replies if r and not r["ok"]]
    assert len(ok) == 300
    assert len(refused) == 200
    assert {r["error"]["code"] for r in refused} == {"insufficient_funds"}  # type: ignore[index]
    # Each accepted withdrawal saw its own balance: 299.00, 298.00, ... 0.00 exactly once.
    after = sorted(int(r["data"]["balance"]["amount"].replace(".", "")) for r in ok)
    assert after == [n * 100 for n in range(300)]
    assert max(client.reply_count()[k] for k in keys) == 1
    await check_invariants(database_url, client, expected_balances={(user, "USD"): 0})
    record("races", commands=501, concurrent_withdrawals=500, lost=0)


@pytest.mark.parametrize("spender", ["withdrawal", "invoice_payment"])
async def test_a_debit_racing_the_completion_of_the_deposit_it_needs(
    workers: list[Worker], client: LoadClient, held: HeldGateway, database_url: str, spender: str
) -> None:
    """10.00 on the account, a 5.00 deposit completing, and a 12.00 debit at the same moment:
    the debit either waits for the deposit and goes through (3.00 left), or comes first
    and is refused on the balance it saw then (10.00) - never refused on a balance that
    would have covered it."""
    users = [f"race-{spender}-{n}-{key()[:6]}" for n in range(100)]
    await fund(client, users, 10_00)
    deposits, invoices = {}, {}
    for user in users:  # 5.00 each, processing until the test delivers the callback
        reply = await client.call(
            names.WALLET_DEPOSIT,
            {
                "idempotency_key": key(),
                "user_id": user,
                "amount": money(5_00),
                "provider": "stripe",
            },
        )
        assert reply["data"]["transaction"]["status"] == "processing", reply
        deposits[user] = reply["data"]["transaction"]["id"]
        if spender == "invoice_payment":
            reply = await client.call(
                names.INVOICE_CREATE,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "currency": "USD",
                    "lines": [
                        {
                            "description": "needs the deposit",
                            "quantity": 1,
                            "unit_price": money(12_00),
                        }
                    ],
                },
            )
            invoices[user] = reply["data"]["id"]

    def debit(user: str) -> tuple[str, dict[str, Any]]:
        if spender == "withdrawal":
            return names.WALLET_WITHDRAW, {
                "idempotency_key": key(),
                "user_id": user,
                "amount": money(12_00),
                "description": "race",
            }
        return names.INVOICE_PAY, {
            "idempotency_key": key(),
            "user_id": user,
            "invoice_id": invoices[user],
            "source": "balance",
        }

    async def race(user: str) -> str:
        callback = held.callbacks[deposits[user]]
        sent, _ = await asyncio.gather(
            client.submit(*debit(user)),
            client.fire(names.PROVIDER_EVENTS_QUEUE, callback, headers=held.headers(callback)),
        )
        return sent

    debits = dict(zip(users, await asyncio.gather(*(race(u) for u in users)), strict=True))
    await client.settle(timeout=60)
    # The callbacks have no reply: wait until every deposit is completed, however late
    # (a coalesced batch of callbacks that conflicted with a debit is run again).
    async with connect(database_url) as db, asyncio.timeout(60):
        while await db.fetchval(
            "SELECT count(*) FROM transactions "
            "WHERE id = ANY($1::uuid[]) AND status <> 'completed'",
            [uuid.UUID(t) for t in deposits.values()],
        ):
            await asyncio.sleep(0.1)

    expected, outcomes = {}, Counter()
    for user, sent in debits.items():
        reply = client.final(sent)
        assert reply is not None
        if reply["ok"]:  # the deposit was credited first
            if spender == "withdrawal":
                assert reply["data"]["balance"]["amount"] == "3.00", reply
            else:
                assert reply["data"]["status"] == "paid", reply
            expected[(user, "USD")] = 3_00
            outcomes[f"{spender}_after_deposit"] += 1
        else:  # refused on the balance before the deposit: exactly what it saw then
            assert reply["error"]["code"] == "insufficient_funds", reply
            assert reply["error"]["details"]["balance"]["amount"] == "10.00", reply
            expected[(user, "USD")] = 15_00
            outcomes[f"{spender}_before_deposit"] += 1
    await check_invariants(database_url, client, expected_balances=expected)
    completed = Counter(
        e.body["data"]["transaction_id"] for e in client.events_of("deposit.completed")
    )
    assert all(completed[t] >= 1 for t in deposits.values())
    record(
        "races", commands=len(client.sent), deposit_vs_debit_pairs=len(users), lost=0, **outcomes
    )


async def test_a_renewal_racing_a_cancel_charges_at_most_once_and_ends_consistently(
    workers: list[Worker], client: LoadClient, clock: ManualClock, database_url: str
) -> None:
    code = f"race-plan-{key()[:6]}"
    reply = await client.call(
        names.PLAN_UPSERT,
        {
            "idempotency_key": key(),
            "code": code,
            "name": "Race",
            "price": money(1_00),
            "interval": "month",
        },
    )
    assert reply["ok"], reply
    users = [f"race-renewal-{n}-{key()[:6]}" for n in range(100)]
    await fund(client, users, 5_00)
    subscriptions = {}
    for user in users:
        reply = await client.call(
            names.SUBSCRIPTION_CREATE,
            {
                "idempotency_key": key(),
                "user_id": user,
                "plan_code": code,
                "payment_source": "balance",
            },
        )
        assert reply["data"]["subscription"]["status"] == "active", reply
        subscriptions[user] = reply["data"]["subscription"]["id"]

    clock.advance(days=32)  # every subscription is due
    now_flags = {user: n % 2 == 0 for n, user in enumerate(users)}  # cancel now / at period end
    cancels = {
        user: {
            "idempotency_key": key(),
            "user_id": user,
            "subscription_id": sub,
            "at_period_end": not now_flags[user],
            "reason": "race",
        }
        for user, sub in subscriptions.items()
    }

    async def cancel_all() -> dict[str, str]:
        sent = await asyncio.gather(
            *(client.submit(names.SUBSCRIPTION_CANCEL, command) for command in cancels.values())
        )
        return dict(zip(cancels, sent, strict=True))

    # Both replicas' schedulers and 100 cancels, all at once.
    first, second, cancel_keys = await asyncio.gather(
        workers[0].renewals.run_once(), workers[1].renewals.run_once(), cancel_all()
    )
    await client.settle(timeout=60)
    await workers[0].renewals.run_once()  # what a cancel kept locked is renewed (or ended) now

    async with connect(database_url) as db:
        rows = {
            str(r["id"]): r
            for r in await db.fetch(
                "SELECT s.id, s.status, s.paid_periods, s.cancel_at_period_end, "
                "(SELECT count(*) FROM subscription_charges c WHERE c.subscription_id = s.id) "
                "AS charges FROM subscriptions s"
            )
        }
    expected, outcomes = {}, Counter()
    for user, sub in subscriptions.items():
        row = rows[sub]
        reply = client.final(cancel_keys[user])
        assert reply is not None
        assert reply["ok"], reply
        assert row["charges"] == row["paid_periods"] in (1, 2), dict(row)
        expected[(user, "USD")] = 5_00 - 1_00 * row["paid_periods"]
        renewed = len(
            [
                e
                for e in client.events_of("subscription.renewed")
                if e.body["data"]["subscription_id"] == sub
            ]
        )
        canceled = len(
            [
                e
                for e in client.events_of("subscription.canceled")
                if e.body["data"]["subscription_id"] == sub
            ]
        )
        assert renewed == row["paid_periods"] - 1, (renewed, dict(row))
        if now_flags[user]:  # canceled at once, before or after this period's charge
            assert reply["data"]["status"] == "canceled", reply
            assert row["status"] == "canceled"
            outcomes[
                "cancel_now_after_renewal"
                if row["paid_periods"] == 2
                else "cancel_now_before_renewal"
            ] += 1
        elif row["paid_periods"] == 2:  # renewed first, then marked to end at the new period end
            assert row["status"] == "active", dict(row)
            assert row["cancel_at_period_end"], dict(row)
            outcomes["cancel_later_after_renewal"] += 1
        else:  # marked first: the scheduler ended it instead of charging
            assert row["status"] == "canceled", dict(row)
            outcomes["cancel_later_before_renewal"] += 1
        assert canceled == (1 if row["status"] == "canceled" else 0), (canceled, dict(row))
    await check_invariants(database_url, client, expected_balances=expected)
    record(
        "races",
        commands=201 + len(users),
        renewal_vs_cancel=len(users),
        lost=0,
        renewal_rounds=dict(first + second),
        **outcomes,
    )


async def test_the_same_provider_event_delivered_concurrently_to_two_workers_applies_once(
    workers: list[Worker], client: LoadClient, held: HeldGateway, database_url: str
) -> None:
    users = [f"race-event-{n}-{key()[:6]}" for n in range(50)]
    deposits = {}
    for user in users:
        reply = await client.call(
            names.WALLET_DEPOSIT,
            {
                "idempotency_key": key(),
                "user_id": user,
                "amount": money(7_00),
                "provider": "stripe",
            },
        )
        deposits[user] = reply["data"]["transaction"]["id"]
    copies = 6
    await asyncio.gather(
        *(
            client.fire(
                names.PROVIDER_EVENTS_QUEUE,
                held.callbacks[deposits[user]],
                headers=held.headers(held.callbacks[deposits[user]]),
            )
            for _ in range(copies)
            for user in users
        )
    )
    ids = set(deposits.values())
    await client.wait_until(
        lambda: (
            ids <= {e.body["data"]["transaction_id"] for e in client.events_of("deposit.completed")}
        ),
        60,
        "every deposit to complete",
    )
    await asyncio.sleep(1)  # let the remaining copies arrive (and be found duplicates)
    await check_invariants(
        database_url, client, expected_balances={(u, "USD"): 7_00 for u in users}
    )
    async with connect(database_url) as db:
        claimed = await db.fetchval(
            "SELECT count(*) FROM idempotency_records WHERE scope = 'provider:stripe'"
        )
    assert claimed == len(users)
    assert not client.dead_letters
    record("races", commands=len(users), duplicate_provider_events=copies * len(users), lost=0)


async def test_the_same_command_delivered_concurrently_to_two_workers_answers_alike(
    workers: list[Worker], client: LoadClient, database_url: str
) -> None:
    code = f"race-dup-plan-{key()[:6]}"
    assert (
        await client.call(
            names.PLAN_UPSERT,
            {
                "idempotency_key": key(),
                "code": code,
                "name": "Dup",
                "price": money(2_00),
                "interval": "month",
            },
        )
    )["ok"]
    users = [f"race-dup-{n}-{key()[:6]}" for n in range(40)]
    await fund(client, users, 50_00)
    commands: list[tuple[str, dict[str, Any]]] = []
    for user in users:
        commands += [
            (
                names.WALLET_WITHDRAW,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "amount": money(3_00),
                    "description": "dup",
                },
            ),
            (
                names.WALLET_DEPOSIT,
                {"idempotency_key": key(), "user_id": user, "amount": money(4_00)},
            ),
            (
                names.SUBSCRIPTION_CREATE,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "plan_code": code,
                    "payment_source": "balance",
                },
            ),
            (
                names.INVOICE_CREATE,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "currency": "USD",
                    "lines": [{"description": "x", "quantity": 1, "unit_price": money(1_00)}],
                },
            ),
        ]
    copies = 4
    keys = await asyncio.gather(*(client.submit(q, c) for q, c in commands))
    await asyncio.gather(*(client.resend_until_sent(k) for _ in range(copies - 1) for k in keys))
    await client.wait_until(
        lambda: all(len(client.replies.get(k, ())) >= copies for k in keys),
        90,
        "every copy to be answered",
    )
    await check_invariants(
        database_url,
        client,
        expected_balances={(u, "USD"): 50_00 - 3_00 + 4_00 - 2_00 for u in users},
    )
    for k in keys:
        replies = client.replies[k]
        assert all(r == replies[0] for r in replies), replies
        assert replies[0]["ok"], replies[0]
    async with connect(database_url) as db:  # one invoice per order, one per paid period
        counts = await db.fetch(
            "SELECT subscription_id IS NULL AS ordered, count(*) FROM invoices GROUP BY 1"
        )
        assert {row["ordered"]: row["count"] for row in counts} == {
            True: len(users),
            False: len(users),
        }
    record("races", commands=len(commands), duplicate_commands=len(commands) * (copies - 1), lost=0)
