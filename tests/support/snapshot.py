"""What an attack must leave unchanged: the money and the objects of the users involved.

`state_of` reads, for the given users, every balance, transaction, subscription, invoice
and saved payment method; an attack test compares it before and after, and runs the
operator's audit (`billing_worker.ops.audit`) for the ledger's invariants on top.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from billing_worker.ops.audit import audit

_TABLES = {
    "virtual_accounts": "user_id, currency, balance_minor",
    "transactions": "id, user_id, kind, status, amount_minor, currency, provider, provider_ref",
    "subscriptions": (
        "id, user_id, status, cancel_at_period_end, canceled_at, cancel_reason, "
        "payment_method_id, current_period_end, paid_periods"
    ),
    "invoices": "id, user_id, status, paid_at, total_minor",
    "payment_methods": "id, user_id, provider, provider_method_id",
}


async def state_of(db: asyncpg.Connection, users: Iterable[str]) -> dict[str, list[Any]]:
    wanted = sorted(set(users))
    state: dict[str, list[Any]] = {}
    for table, columns in _TABLES.items():
        rows = await db.fetch(
            f"SELECT {columns} FROM {table} WHERE user_id = ANY($1::text[]) "  # noqa: S608
            f"ORDER BY {columns}",
            wanted,
        )
        state[table] = [tuple(row.values()) for row in rows]
    return state


async def assert_ledger_sound(db: asyncpg.Connection, users: Iterable[str]) -> None:
    """The audit passes for these users (and for every check not about one user): other
    tests share the database, and some credit accounts directly on purpose."""
    involved = set(users)
    findings = [
        (finding.check, rows)
        for finding in await audit(db)
        if (rows := [r for r in finding.rows if r.get("user_id", next(iter(involved))) in involved])
    ]
    assert not findings, "audit failed:\n" + "\n".join(f"{c}: {r[:5]}" for c, r in findings)
