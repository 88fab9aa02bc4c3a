"""Provider callbacks that arrive while a batch is being applied go together into the next
one (`BillingService.provider_events`, the provider-events route's Coalescer): one lookup
of seen event ids, the confirms side by side, one transaction and one outbox statement
for every confirmed event, each applied exactly as on its own; a batch failing as a
whole falls back to one by one.

The batches are made, not hoped for: the test holds the row lock of one deposit's
transaction, sends that deposit's callback (its batch then waits for the lock), sends
the flood and waits until every callback of it waits in the coalescer; releasing the
lock lets the first batch finish and the whole flood go in the next one.

Real worker, real broker, the sandbox provider: the callbacks are the sandbox's own
(signed with the worker's key), for deposits made with `pm_card_pending` (the sandbox
sends nothing for those, the test delivers their callbacks).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from billing_contracts import names
from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.idempotency import SqlIdempotency
from billing_worker.messaging.coalescer import Coalescer
from billing_worker.providers import sandbox
from billing_worker.providers.base import PaymentRequest
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from support.attacker import handled
from support.invariants import connect
from support.rpc import Bus
from support.sandbox import signed
from support.statements import statements

pytestmark = pytest.mark.integration

DEPOSIT = "billing.wallet.deposit"
QUEUE = names.PROVIDER_EVENTS_QUEUE
INBOX = "provider:sandbox"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """A database of its own: the rows counted are this test's only."""
    return fresh_database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connect(database_url) as connection:
        yield connection


async def until(
    condition: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = 30
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# --- deposits whose callbacks the test delivers -----------------------------------------


@dataclass(frozen=True)
class Deposit:
    user: str
    transaction_id: uuid.UUID
    amount_minor: int
    event_id: str
    body: bytes  # the sandbox's callback: payment.succeeded
    headers: dict[str, str]  # x-provider and the worker's signature


def the_sandbox(worker: Worker) -> SandboxGateway:
    gateway = worker.service.deps.gateways.get("sandbox")
    assert isinstance(gateway, SandboxGateway)
    return gateway


def sandbox_callback(
    worker: Worker, transaction_id: uuid.UUID, user: str, amount_minor: int
) -> tuple[str, bytes, dict[str, str]]:
    """(event id, body, headers) of the success callback the sandbox would send for the
    payment of this transaction (its ids derive from the transaction id)."""
    request = PaymentRequest(transaction_id=transaction_id, user_id=user,
                             amount_minor=amount_minor, currency="USD",
                             idempotency_key=str(transaction_id))  # fmt: skip
    _, event_id, body = sandbox.callback(request)
    return event_id, body, signed(the_sandbox(worker), body)


async def pending_deposit(bus: Bus, worker: Worker, tag: str, amount_minor: int) -> Deposit:
    user = f"batch-{tag}-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        DEPOSIT,
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": "sandbox",
         "payment_method_id": sandbox.PENDING_METHOD,
         "amount": {"amount": f"{amount_minor / 100:.2f}", "currency": "USD"}},
    )  # fmt: skip
    assert reply["ok"], reply
    transaction = reply["data"]["transaction"]
    assert transaction["status"] == "processing", transaction
    transaction_id = uuid.UUID(transaction["id"])
    event_id, body, headers = sandbox_callback(worker, transaction_id, user, amount_minor)
    return Deposit(user, transaction_id, amount_minor, event_id, body, headers)


async def deposits(bus: Bus, worker: Worker, count: int, tag: str) -> list[Deposit]:
    # Amounts all different: an event applied to another's transaction shows.
    return list(
        await asyncio.gather(*(pending_deposit(bus, worker, tag, 1000 + 37 * n)
                               for n in range(count)))
    )  # fmt: skip


# --- making the batch ----------------------------------------------------------------------


def coalescer_of(worker: Worker) -> Coalescer[Any, Any]:
    """The provider-events route's Coalescer."""
    [route] = [route for route in worker.routes if route.queue == QUEUE]
    assert route.coalescer is not None, "provider callbacks are not coalesced (coalesce_max 1?)"
    assert isinstance(route.coalescer, Coalescer), route.coalescer
    return route.coalescer


@dataclass
class Flood:
    batches: int  # batches the coalescer ran for the blocker and the flood
    items: int


async def flood(
    bus: Bus,
    worker: Worker,
    database_url: str,
    blocker: Deposit,
    messages: Sequence[tuple[bytes, dict[str, str]]],
    coalesced: int,
    finished: int | None = None,
) -> Flood:
    """Deliver `blocker`'s callback, then `messages` while its batch waits for the row
    lock the test holds, until `coalesced` of them wait in the coalescer; then let go and
    wait until the worker is done with `finished` callbacks (default: all of them)."""
    coalescer = coalescer_of(worker)
    batches, items = coalescer.batches, coalescer.items
    before = handled(worker)
    async with connect(database_url) as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM transactions WHERE id = $1 FOR UPDATE",
                             blocker.transaction_id)  # fmt: skip
        await bus.send(QUEUE, blocker.body, headers=blocker.headers)
        await until(lambda: coalescer.batches == batches + 1, "the blocker's batch")
        await asyncio.gather(*(bus.send(QUEUE, body, headers=headers)
                               for body, headers in messages))  # fmt: skip
        # Private, but the only way to know the flood is all in before the lock goes.
        await until(lambda: len(coalescer._waiting) == coalesced, f"{coalesced} waiting")
    total = 1 + len(messages) if finished is None else finished
    await until(lambda: handled(worker) >= before + total, f"{total} callbacks handled")
    return Flood(coalescer.batches - batches, coalescer.items - items)


# --- statements -----------------------------------------------------------------------------


def outbox_inserts(worker: Worker) -> AbstractAsyncContextManager[list[Sequence[Any]]]:
    """The arguments of every `INSERT INTO outbox` the worker's connections send while
    the block runs (its batches have connections of their own)."""
    engines = [worker.engine, worker.service.batch_engine]
    return statements(engines, lambda r: r.args if "INSERT INTO outbox" in r.query else None)


def users_in(arguments: Sequence[Any]) -> list[str]:
    """The user of each outbox row one INSERT wrote (its payloads are argument 5)."""
    return [json.loads(payload)["data"].get("user_id") for payload in arguments[4]]


# --- what was applied --------------------------------------------------------------------


async def balance(db: asyncpg.Connection, user: str) -> int:
    value = await db.fetchval(
        "SELECT balance_minor FROM virtual_accounts WHERE user_id = $1 AND currency = 'USD'", user
    )
    return int(value or 0)


async def status(db: asyncpg.Connection, transaction_id: uuid.UUID) -> str:
    return str(await db.fetchval("SELECT status FROM transactions WHERE id = $1", transaction_id))


async def outbox_events(db: asyncpg.Connection, type_: str, user: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM outbox WHERE type = $1 AND payload->'data'->>'user_id' = $2",
            type_,
            user,
        )
    )


async def inbox_records(db: asyncpg.Connection, event_ids: Sequence[str]) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT key, count(*) AS n FROM idempotency_records WHERE scope = $1 "
        "AND key = ANY($2::text[]) GROUP BY key",
        INBOX,
        list(event_ids),
    )
    return {row["key"]: row["n"] for row in rows}


async def writing_transactions(db: asyncpg.Connection, event_ids: Sequence[str]) -> int:
    """How many database transactions wrote these events' inbox records (their xmin)."""
    return int(
        await db.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM idempotency_records "
            "WHERE scope = $1 AND key = ANY($2::text[])",
            INBOX,
            list(event_ids),
        )
    )


def counted(worker: Worker, name: str, **labels: str) -> float:
    total = 0.0
    for metric in worker.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def outcomes(worker: Worker, outcome: str) -> float:
    """Provider callbacks the pipeline finished with this outcome (retried, ok, ...)."""
    return counted(worker, "billing_messages_handled_seconds_count", queue=QUEUE, outcome=outcome)


def applied(worker: Worker, outcome: str) -> float:
    """Provider events by what applying them came to (applied, duplicate, ...)."""
    return counted(worker, "billing_provider_events_total", provider="sandbox", outcome=outcome)


async def assert_applied_once(db: asyncpg.Connection, bus: Bus, deposit: Deposit) -> None:
    assert await status(db, deposit.transaction_id) == "completed", deposit.user
    assert await balance(db, deposit.user) == deposit.amount_minor, deposit.user
    assert await outbox_events(db, "deposit.completed", deposit.user) == 1, deposit.user
    assert await outbox_events(db, "payment.success", deposit.user) == 1, deposit.user
    await bus.event("deposit.completed", lambda d: d["user_id"] == deposit.user)
    # One event (delivery is at least once: a copy would carry the same event id; the
    # worker can publish a row twice when its commit outlasts the outbox's grace).
    received = bus.events_of("deposit.completed", lambda d: d["user_id"] == deposit.user)
    assert len({event["event_id"] for event in received}) == 1, received


# --- the tests ------------------------------------------------------------------------------


async def test_a_flood_of_completions_is_applied_once_each_in_one_transaction(
    bus: Bus, worker: Worker, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    assert settings.coalesce_max > 12
    blocker, *many = await deposits(bus, worker, 13, "flood")

    async with outbox_inserts(worker) as inserts:
        made = await flood(bus, worker, database_url, blocker,
                           [(d.body, d.headers) for d in many], coalesced=len(many))  # fmt: skip

    assert (made.batches, made.items) == (2, 13)  # the blocker's, then all 12 together
    for deposit in [blocker, *many]:
        await assert_applied_once(db, bus, deposit)
    event_ids = [d.event_id for d in many]
    assert await inbox_records(db, [blocker.event_id, *event_ids]) == dict.fromkeys(
        [blocker.event_id, *event_ids], 1
    )
    assert await writing_transactions(db, event_ids) == 1  # the 12 shared one transaction
    assert await writing_transactions(db, [blocker.event_id, event_ids[0]]) == 2
    # One statement wrote the 12 deposits' outbox rows (payment.success, deposit.completed).
    flood_users = {d.user for d in many}
    theirs = [users_in(args) for args in inserts if flood_users & set(users_in(args))]
    assert len(theirs) == 1, theirs
    assert sorted(theirs[0]) == sorted([d.user for d in many] * 2)
    assert applied(worker, "applied") == 13
    assert outcomes(worker, "retried") == 0


async def test_the_same_callback_twice_in_one_batch_and_one_applied_before_credit_once(
    bus: Bus, worker: Worker, database_url: str, db: asyncpg.Connection
) -> None:
    blocker, twice, *others = await deposits(bus, worker, 6, "twice")
    messages = [(twice.body, twice.headers), *((d.body, d.headers) for d in others),
                (twice.body, twice.headers),  # the same callback again, same batch
                (blocker.body, blocker.headers)]  # fmt: skip  # applied by the batch before

    made = await flood(bus, worker, database_url, blocker, messages, coalesced=len(messages))

    assert (made.batches, made.items) == (2, 1 + len(messages))
    for deposit in [blocker, twice, *others]:
        await assert_applied_once(db, bus, deposit)
    assert await inbox_records(db, [twice.event_id, blocker.event_id]) == {
        twice.event_id: 1, blocker.event_id: 1,
    }  # fmt: skip
    assert applied(worker, "duplicate") == 2
    assert applied(worker, "applied") == 2 + len(others)
    assert outcomes(worker, "ok") == 1 + len(messages)  # each acknowledged, none retried


async def test_a_callback_for_a_payment_not_there_yet_neither_fails_nor_holds_back_the_others(
    bus: Bus, worker: Worker, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    blocker, *others = await deposits(bus, worker, 7, "unknown")
    # Genuine (signed) but for a payment the worker has no row of: TransientError.
    unknown_id, unknown_body, unknown_headers = sandbox_callback(
        worker, uuid.uuid4(), "batch-unknown-nobody", 1234
    )
    messages = [*((d.body, d.headers) for d in others[:3]), (unknown_body, unknown_headers),
                *((d.body, d.headers) for d in others[3:])]  # fmt: skip

    made = await flood(bus, worker, database_url, blocker, messages,
                       coalesced=len(messages), finished=1 + len(others))  # fmt: skip

    assert made.batches >= 2
    for deposit in [blocker, *others]:  # applied at their first delivery
        await assert_applied_once(db, bus, deposit)
    # The unknown one is retried through the delay queues and dead-lettered at the end.
    [dead] = await bus.dead_letters.wait_for(lambda m: json.loads(m.body)["id"] == unknown_id)
    reason = str(dead.headers[names.REASON_HEADER])
    assert reason.startswith(f"failed {settings.max_deliveries} times: TransientError"), reason
    assert "no sandbox payment" in reason, reason
    assert dead.headers[names.ORIGINAL_QUEUE_HEADER] == QUEUE
    await until(lambda: outcomes(worker, "dead_lettered") == 1, "the dead letter counted")
    # Only the unknown callback was ever retried: the others did not wait for it.
    assert outcomes(worker, "retried") == settings.max_deliveries - 1
    assert outcomes(worker, "ok") == 1 + len(others)
    assert await inbox_records(db, [unknown_id]) == {}  # never claimed: it may yet come true
    assert applied(worker, "applied") == 1 + len(others)


async def test_a_forged_callback_in_the_flood_is_refused_and_the_rest_applied(
    bus: Bus, worker: Worker, database_url: str, db: asyncpg.Connection
) -> None:
    blocker, target, *others = await deposits(bus, worker, 6, "forged")
    # The target's own success callback with a signature not made with the worker's key,
    # and once without any signature.
    bad = {**target.headers, names.SANDBOX_SIGNATURE_HEADER: "0" * 64}
    unsigned = {names.PROVIDER_HEADER: "sandbox"}
    messages = [*((d.body, d.headers) for d in others[:2]), (target.body, bad),
                *((d.body, d.headers) for d in others[2:]), (target.body, unsigned)]  # fmt: skip

    # The forgeries never reach the coalescer: the parser refuses them.
    made = await flood(bus, worker, database_url, blocker, messages, coalesced=len(others))

    assert (made.batches, made.items) == (2, 1 + len(others))
    for deposit in [blocker, *others]:
        await assert_applied_once(db, bus, deposit)
    refused = await bus.dead_letters.wait_for(
        lambda m: m.body == target.body and m.headers.get(names.ORIGINAL_QUEUE_HEADER) == QUEUE,
        count=2,
    )
    reasons = sorted(str(m.headers[names.REASON_HEADER]) for m in refused)
    assert all(r.startswith("invalid_message: ") for r in reasons), reasons
    assert any("wrong signature" in r for r in reasons), reasons
    assert any("without the worker's signature" in r for r in reasons), reasons
    assert outcomes(worker, "invalid") == 2
    assert await status(db, target.transaction_id) == "processing"
    assert await balance(db, target.user) == 0
    assert await inbox_records(db, [target.event_id]) == {}  # the forgery claimed nothing

    # ... so the genuine callback, when it comes, still applies.
    before = handled(worker)
    await bus.send(QUEUE, target.body, headers=target.headers)
    await until(lambda: handled(worker) > before, "the genuine callback")
    await assert_applied_once(db, bus, target)


async def test_seen_many_finds_exactly_the_scope_and_key_pairs_recorded(
    worker: Worker,
) -> None:
    tag = uuid.uuid4().hex[:8]
    async with driver_connection(worker.engine) as connection:
        idempotency = SqlIdempotency(connection)
        assert await idempotency.seen_many([]) == set()
        for scope, key in [("provider:sandbox", f"a-{tag}"), ("provider:stripe", f"b-{tag}")]:
            assert await idempotency.claim(scope, key)

        seen = await idempotency.seen_many([
            ("provider:sandbox", f"a-{tag}"),  # recorded
            ("provider:stripe", f"a-{tag}"),  # that key, in another scope: not recorded
            ("provider:sandbox", f"b-{tag}"),  # and the other way round
            ("provider:stripe", f"b-{tag}"),  # recorded
            ("provider:sandbox", f"c-{tag}"),  # nowhere
            ("provider:sandbox", f"a-{tag}"),  # asked twice
        ])  # fmt: skip
        # Keys recorded, but each in the other scope: none of these pairs is.
        crossed = await idempotency.seen_many(
            [("provider:stripe", f"a-{tag}"), ("provider:sandbox", f"b-{tag}")]
        )

    assert seen == {("provider:sandbox", f"a-{tag}"), ("provider:stripe", f"b-{tag}")}
    assert crossed == set()
