"""The correctness check after every run: a fast wrong run is a failed run.

It compares three views of one run: what the load generator sent (the `Plan`), what it
received (`Observed`), and what the database holds. Each problem is one line; an empty
list means the run was right:

- every withdraw got exactly one reply, under its own correlation id, and that reply is
  the success for its own user and amount; no reply for a command never sent;
- every deposit completion produced its `deposit.completed` event;
- idempotency_records holds exactly one row per command sent (`wallet.withdraw` keys,
  `provider:sandbox` event ids) and nothing else;
- exactly one `withdrawal` transaction per idempotency key (its `reference`), with the
  command's user and amount; every seeded deposit `completed`; no other transaction;
- balances exact: each account = initial - its withdraws + its deposits, as planned AND
  as the database's own transaction rows say; none negative;
- the outbox holds one row per expected event; for the worker every row is published
  (`published_at` set: the check runs after the outbox settled);
- no message left in a work queue or the dead-letter queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from benchmarks.load import Observed
from benchmarks.plan import Plan
from billing_contracts import names
from billing_worker.db.idempotency import queue_scope_of

LISTED = 3  # examples quoted per problem


def listed(what: str, items: Iterable[object]) -> list[str]:
    """'<n> <what> (e.g. a, b, c)' when there is any item, else nothing."""
    found = list(items)
    if not found:
        return []
    examples = ", ".join(str(item) for item in found[:LISTED])
    return [f"{len(found)} {what} (e.g. {examples})"]


def expected_events(plan: Plan, side: str) -> dict[str, int]:
    counts = {"withdrawal.completed": len(plan.withdraws), "deposit.completed": len(plan.deposits)}
    if side == "worker":  # the worker also announces the payment itself
        counts["payment.success"] = len(plan.deposits)
    return {event: count for event, count in counts.items() if count}


def check_observed(plan: Plan, observed: Observed) -> list[str]:
    replies = observed.replies
    problems = listed("withdraws got no reply", (k for k in plan.withdraws if not replies[k]))
    problems += listed(
        "withdraws got more than one reply", (f"{k} x{n}" for k, n in replies.items() if n > 1)
    )
    problems += listed("wrong replies", observed.wrong_replies)
    if observed.unknown_replies:
        problems.append(f"{observed.unknown_replies} replies carry a correlation id never sent")
    problems += listed(
        "deposit completions never announced (deposit.completed)",
        (k for k in plan.deposits if not observed.deposit_events[k]),
    )
    problems += listed(
        "queues still hold messages after the run",
        (f"{queue}: {n}" for queue, n in observed.leftovers.items() if n),
    )
    return problems


async def check_idempotency(
    db: asyncpg.Connection, plan: Plan, since: datetime | None = None
) -> list[str]:
    query = f"SELECT scope, key FROM idempotency_records {_own_records(since)}"  # noqa: S608
    rows = await db.fetch(query)
    by_scope: dict[str, Counter[str]] = {}
    for row in rows:  # a command's record is scoped by its user too: count it by queue
        by_scope.setdefault(queue_scope_of(row["scope"]), Counter())[row["key"]] += 1
    expected = {
        "wallet.withdraw": set(plan.withdraws),
        "provider:sandbox": {d.event_id for d in plan.deposits.values()},
    }
    problems: list[str] = []
    for scope, keys in expected.items():
        found = by_scope.pop(scope, Counter())
        problems += listed(f"{scope} commands without an idempotency record", keys - set(found))
        problems += listed(f"{scope} idempotency records for nothing sent", set(found) - keys)
    problems += listed("idempotency records of unexpected scopes", by_scope)
    return problems


async def check_transactions(
    db: asyncpg.Connection, plan: Plan, since: datetime | None = None
) -> list[str]:
    rows = await db.fetch(
        "SELECT id, kind, status, reference, user_id, amount_minor FROM transactions "  # noqa: S608 - constant filters
        + _own_users(since)
    )
    withdrawals = Counter(row["reference"] for row in rows if row["kind"] == "withdrawal")
    problems = listed(
        "commands applied more than once (withdrawal rows per key)",
        (f"{key} x{n}" for key, n in withdrawals.items() if n > 1),
    )
    problems += listed("commands never applied", (k for k in plan.withdraws if not withdrawals[k]))
    problems += listed(
        "withdrawals of commands never sent", (k for k in withdrawals if k not in plan.withdraws)
    )
    problems += listed(
        "withdrawals with another user or amount than their command",
        (
            row["reference"]
            for row in rows
            if row["kind"] == "withdrawal"
            and (command := plan.withdraws.get(row["reference"])) is not None
            and (row["user_id"], row["amount_minor"]) != (command.user_id, command.amount_minor)
        ),
    )
    deposits = {str(row["id"]): row["status"] for row in rows if row["kind"] == "deposit"}
    problems += listed(
        "deposits not completed",
        (
            f"{k}: {deposits.get(k, 'missing')}"
            for k in plan.deposits
            if deposits.get(k) != "completed"
        ),
    )
    problems += listed(
        "transactions nobody asked for",
        (
            row["id"]
            for row in rows
            if row["kind"] not in ("withdrawal", "deposit")
            or (row["kind"] == "deposit" and str(row["id"]) not in plan.deposits)
        ),
    )
    return problems


async def check_balances(
    db: asyncpg.Connection, plan: Plan, since: datetime | None = None
) -> list[str]:
    actual = {
        row["user_id"]: row["balance_minor"]
        for row in await db.fetch(
            "SELECT user_id, balance_minor FROM virtual_accounts " + _own_users(since)  # noqa: S608 - constant filters
        )
    }
    expected = plan.expected_balances()
    ledger = dict.fromkeys(actual, plan.initial_balance)
    for row in await db.fetch(
        "SELECT user_id, sum(CASE WHEN kind = 'withdrawal' THEN -amount_minor ELSE amount_minor "  # noqa: S608 - constant filters
        "END) AS moved FROM transactions WHERE status = 'completed' "
        + _own_users(since).replace("WHERE", "AND")
        + " GROUP BY user_id"
    ):
        ledger[row["user_id"]] = ledger.get(row["user_id"], plan.initial_balance) + row["moved"]
    problems = listed(
        "balances differ from initial - withdraws + deposits sent",
        (
            f"{user}: {actual.get(user)} != {balance}"
            for user, balance in expected.items()
            if actual.get(user) != balance
        ),
    )
    problems += listed(
        "balances differ from their own transaction rows",
        (
            f"{user}: {actual[user]} != {ledger[user]}"
            for user in actual
            if actual[user] != ledger[user]
        ),
    )
    problems += listed("accounts nobody funded", set(actual) - set(expected))
    problems += listed("negative balances", (u for u, b in actual.items() if b < 0))
    if sum(actual.values()) != sum(expected.values()):
        problems.append(
            f"total balance {sum(actual.values())} != expected {sum(expected.values())}"
        )
    return problems


async def check_outbox(
    db: asyncpg.Connection, plan: Plan, side: str, since: datetime | None = None
) -> list[str]:
    rows = await db.fetch(
        "SELECT type, count(*) AS n, count(*) FILTER (WHERE published_at IS NULL) AS pending "  # noqa: S608 - constant filters
        f"FROM outbox {_own_outbox(since)} GROUP BY type"
    )
    found = {row["type"]: row["n"] for row in rows}
    problems = []
    expected = expected_events(plan, side)
    if found != expected:
        problems.append(f"outbox rows by type {found} != expected {expected}")
    pending = sum(row["pending"] for row in rows)
    if side == "worker" and pending:
        problems.append(f"{pending} committed outbox rows were never published")
    return problems


async def check(
    db: asyncpg.Connection, plan: Plan, observed: Observed, side: str,
    since: datetime | None = None,
) -> list[str]:  # fmt: skip
    """Every problem of the run, one line each; [] when it was right.

    `since`: the run's database is a copy of a scaled template (benchmarks/scale.py),
    whose seeded rows are no part of the run: its users' (`scale-user-<n>`), its
    idempotency records (keys `scale-<n>`) and its outbox rows (written before `since`)
    are left out of every count."""
    return [
        *check_observed(plan, observed),
        *await check_idempotency(db, plan, since),
        *await check_transactions(db, plan, since),
        *await check_balances(db, plan, since),
        *await check_outbox(db, plan, side, since),
    ]


def _own_users(since: datetime | None) -> str:
    return "" if since is None else "WHERE user_id NOT LIKE 'scale-user-%'"


def _own_records(since: datetime | None) -> str:
    return "" if since is None else "WHERE key NOT LIKE 'scale-%'"


def _own_outbox(since: datetime | None) -> str:
    # A timestamp of this process, formatted by Python: no user input reaches the SQL.
    return "" if since is None else f"WHERE created_at >= '{since.isoformat()}'::timestamptz"


WORK_QUEUES = [names.WALLET_WITHDRAW, names.PROVIDER_EVENTS_QUEUE, names.DEAD_LETTER_QUEUE]
