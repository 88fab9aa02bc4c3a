"""The invariants every fault run must leave intact, judged on the run's own database.

`check_invariants` runs `billing_worker.ops.audit.audit` (the operator's checks) and the
test-side ones the audit cannot know about, because they need what the clients saw:

- every accepted command applied exactly once by its idempotency key (its derived
  transaction / subscription exists once; a refused one left none behind), and no
  provider call left between its two phases (`provider_intents` empty);
- every reply a key ever got is the same reply, and the one stored with the key;
- every committed outbox row published, and seen by a consumer of `billing.events`;
- never two event ids for one fact (one `deposit.completed` per deposit, ...), neither
  in the outbox nor among the events collected;
- balances equal what the test computed on its side.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from billing_worker.db.idempotency import user_scope
from billing_worker.domain.ledger import derived_id
from billing_worker.ops.audit import audit
from support.load import LoadClient, is_final

# The transaction / row a command names, derived from its key by the worker.
_DERIVED = {
    "billing.wallet.deposit": ("deposit", "transactions"),
    "billing.wallet.withdraw": ("withdraw", "transactions"),
    "billing.subscription.create": ("subscription", "subscriptions"),
}


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    parsed = make_url(database_url)
    connection = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        yield connection
    finally:
        await connection.close()


def fact_of(type_: str, data: Mapping[str, Any]) -> str | None:
    """What one event announces; two event ids for one fact is a double announcement."""
    if type_ in ("deposit.completed", "withdrawal.completed", "payment.success", "payment.failed"):
        return str(data["transaction_id"])
    if type_ in ("invoice.created", "invoice.paid", "invoice.voided", "invoice.uncollectible",
                 "invoice.overdue"):  # fmt: skip
        return str(data["invoice_id"])
    if type_ in ("subscription.created", "subscription.canceled"):
        return str(data["subscription_id"])
    if type_ in ("subscription.paused", "subscription.resumed"):
        # One per change of a subscription in a period: a pause scheduled (or taken), a
        # period-end cancel undone (`cancel_undone`), a pause dropped or ended.
        return (
            f"{type_}:{data['subscription_id']}:{data.get('reason')}:"
            f"{data.get('pause_at_period_end')}@{data['current_period_start']}"
        )
    if type_ == "subscription.renewed":
        return f"{data['subscription_id']}@{data['current_period_start']}"
    if type_ == "subscription.past_due":
        return f"{data['subscription_id']}@{data['current_period_end']}"
    if type_ == "subscription.updated":  # one per move of a subscription to a version
        return (
            f"{data['subscription_id']}:{data['from_plan_version']}->{data['plan_version']}"
            f"@{data['effective_at']}"
        )
    if type_ == "payment.refunded":
        return f"refund:{data['refund_id']}"
    if type_ in ("hold.created", "hold.captured", "hold.released", "hold.expired"):
        return f"{type_}:{data['hold_id']}"
    if type_ == "credit.granted":
        return str(data["transaction_id"])
    return None  # balance.low may rightly repeat (once per crossing)


async def wait_for_settled(database_url: str, timeout: float = 90.0) -> None:
    """Until the outbox is empty and no sandbox payment is still waiting for its callback."""
    deadline = time.monotonic() + timeout
    async with connect(database_url) as db:
        while True:
            unpublished = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            waiting = await db.fetchval(
                "SELECT count(*) FROM transactions WHERE provider = 'sandbox' "
                "AND status IN ('created', 'processing')"
            )
            if unpublished == 0 and waiting == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not settled: {unpublished} outbox rows unpublished, "
                    f"{waiting} sandbox payments still processing"
                )
            await asyncio.sleep(0.25)


async def check_invariants(
    database_url: str,
    client: LoadClient | None = None,
    *,
    expected_balances: Mapping[tuple[str, str], int] | None = None,
    events_timeout: float = 60.0,
    settle: bool = True,
    redelivered: bool = False,
    unanswered_providers: Collection[str] = (),
) -> dict[str, int]:
    """Assert every invariant; returns a few counts for the run's figures.

    `unanswered_providers`: users whose provider never answered (a command dead-lettered
    while its provider was down): their begun provider calls stay, for the reconciler.

    Without `redelivered` (no worker was killed, no connection lost) every send of a
    command is answered exactly once; with it, a command may be answered more often
    (a delivery interrupted after its reply is redelivered), but always alike.
    """
    if settle:
        await wait_for_settled(database_url)
    figures: dict[str, int] = {}
    async with connect(database_url) as db:
        findings = await audit(db)
        assert not findings, "audit failed:\n" + "\n".join(
            f"{f.check}: {f.rows[:5]}" for f in findings
        )
        processing = await db.fetch(
            "SELECT id FROM transactions WHERE status = 'processing' AND provider_ref IS NULL"
        )
        assert not processing, f"processing without provider_ref: {processing}"
        unsettled = await db.fetch(
            "SELECT id, kind, user_id FROM provider_intents WHERE NOT user_id = ANY($1::text[])",
            list(unanswered_providers),
        )
        assert not unsettled, f"provider calls begun and never settled: {unsettled[:5]}"
        unpublished = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert unpublished == 0, f"{unpublished} committed outbox rows never published"
        outbox = await db.fetch(
            "SELECT event_id, type, payload FROM outbox WHERE exchange = 'billing.events'"
        )
        figures["outbox_events"] = len(outbox)
        facts: dict[tuple[str, str], set[str]] = defaultdict(set)
        for row in outbox:
            fact = fact_of(row["type"], json.loads(row["payload"])["data"])
            if fact is not None:
                facts[(row["type"], fact)].add(str(row["event_id"]))
        doubled = {fact: ids for fact, ids in facts.items() if len(ids) > 1}
        assert not doubled, (
            f"one fact, several event ids in the outbox: {list(doubled.items())[:5]}"
        )

        if client is not None:
            await _check_replies(db, client, figures, redelivered)
            await _check_events(client, {str(row["event_id"]) for row in outbox}, events_timeout)

        if expected_balances is not None:
            rows = await db.fetch("SELECT user_id, currency, balance_minor FROM virtual_accounts")
            actual = {(r["user_id"], r["currency"]): r["balance_minor"] for r in rows}
            wrong = {
                account: (actual.get(account, 0), want)
                for account, want in expected_balances.items()
                if actual.get(account, 0) != want
            }
            assert not wrong, f"balances (actual, expected) differ: {list(wrong.items())[:10]}"
            figures["balances_checked"] = len(expected_balances)
    return figures


async def _check_replies(
    db: asyncpg.Connection, client: LoadClient, figures: dict[str, int], redelivered: bool
) -> None:
    stored = {
        (r["scope"], r["key"]): r["reply"]
        for r in await db.fetch(
            "SELECT scope, key, reply FROM idempotency_records WHERE scope NOT LIKE 'provider:%'"
        )
    }
    derived: dict[str, set[uuid.UUID]] = defaultdict(set)
    for table in ("transactions", "subscriptions"):
        derived[table] = {r["id"] for r in await db.fetch(f"SELECT id FROM {table}")}  # noqa: S608
    begun = {  # provider calls a command began and no answer finished yet
        (r["scope"], r["idempotency_key"])
        for r in await db.fetch("SELECT scope, idempotency_key FROM provider_intents")
    }
    commands = 0
    for key, sent in client.sent.items():
        replies = client.replies.get(key, [])
        assert replies, f"{sent.queue} {key} never answered"
        if not redelivered:
            # A publish whose confirm never came (a timeout on a busy broker) may still
            # have been delivered, and then answered.
            assert sent.sends <= len(replies) <= sent.sends + sent.unconfirmed, (
                f"{key}: {sent.sends} sends (+{sent.unconfirmed} unconfirmed), "
                f"{len(replies)} replies"
            )
        finals = [reply for reply in replies if is_final(reply)]
        if not finals:  # given up on (internal_error): it must have changed nothing...
            payload = json.loads(sent.body)
            scoped = (_scope(sent.queue, payload), str(payload.get("idempotency_key")))
            assert scoped not in stored
            if scoped in begun:
                continue  # ...but a provider call it began, which waits under its key
            if sent.queue in _DERIVED:
                name, table = _DERIVED[sent.queue]
                assert _derived(name, payload) not in derived[table]
            continue
        first = finals[0]
        assert all(reply == first for reply in finals), f"{key} answered differently: {finals}"
        try:
            payload = json.loads(sent.body)
        except (ValueError, RecursionError):
            continue  # not a command at all
        if not isinstance(payload, dict) or "idempotency_key" not in payload:
            continue  # a query (or a body that never was a command)
        if (
            not first["ok"]
            and first["error"]["code"] == "invalid_message"
            and ("errors" in first["error"]["details"] or "exceeds" in first["error"]["message"])
        ):
            continue  # refused by the contract: never reached the handler
        commands += 1
        record = stored.get((_scope(sent.queue, payload), str(payload["idempotency_key"])))
        assert record is not None, f"{sent.queue} {key} answered but not recorded"
        if not first["ok"] and first["error"]["code"] == "idempotency_conflict":
            continue  # the key was first used (and recorded) with another payload
        assert json.loads(record) == first, f"{key}: stored reply differs from the one sent"
        if sent.queue in _DERIVED:
            name, table = _DERIVED[sent.queue]
            exists = _derived(name, payload) in derived[table]
            if first["ok"]:
                assert exists, f"{sent.queue} {key} accepted but not applied"
            elif first["error"]["code"] != "idempotency_conflict":
                assert not exists, f"{sent.queue} {key} refused but applied: {first}"
    figures["commands_checked"] = commands


def _scope(queue: str, payload: Mapping[str, Any]) -> str:
    """Where the worker records a command: its queue and the user it acts for, if any."""
    user = payload.get("user_id")
    return user_scope(queue.removeprefix("billing."), None if user is None else str(user))


def _derived(name: str, payload: Mapping[str, Any]) -> uuid.UUID:
    return derived_id(name, str(payload["user_id"]), str(payload["idempotency_key"]))


async def _check_events(client: LoadClient, outbox_ids: set[str], timeout: float) -> None:
    def missing() -> set[str]:
        return outbox_ids - {event.message_id or "" for event in client.events}

    await client.wait_until(lambda: not missing(), timeout, "every outbox event to be consumed")
    facts: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in client.events:
        assert event.message_id == event.body["event_id"], "message_id is not the event id"
        fact = fact_of(event.routing_key, event.body["data"])
        if fact is not None:
            facts[(event.routing_key, fact)].add(event.body["event_id"])
    doubled = {fact: ids for fact, ids in facts.items() if len(ids) > 1}
    assert not doubled, f"one fact announced under several event ids: {list(doubled.items())[:5]}"
