"""Retention's SQL: old idempotency records, provider-event claims and published outbox
rows are deleted in small batches; and what a command finds after its record is gone.

Each batch is one short statement that locks only the rows it deletes (`FOR UPDATE
SKIP LOCKED`: a row another transaction holds is left for the next round) and reaches
them through an index (`ix_idempotency_records_created_at`, `ix_outbox_published`), so
it neither scans the tables nor waits on the money path. An outbox row is deleted only
when `published_at` is set and old: the condition is checked again on the locked row,
and an unpublished row is never a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from billing_contracts import names

# Providers redeliver a webhook for up to 3 days (Stripe; YooKassa 24 hours): a claim
# kept for a week outlives every redelivery, whatever the command retention says.
CLAIM_MIN_DAYS = 7
CLAIM_SCOPES = ("provider:", "reconcile:")

_IS_CLAIM = "(scope LIKE 'provider:%' OR scope LIKE 'reconcile:%')"

# $1 days for command records, $2 days for claims ($2 >= $1), $3 rows at most.
_DELETE_RECORDS = f"""
WITH doomed AS (
    SELECT scope, key FROM idempotency_records
    WHERE created_at < now() - make_interval(days => $1)
      AND (NOT {_IS_CLAIM} OR created_at < now() - make_interval(days => $2))
    ORDER BY created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM idempotency_records r USING doomed
    WHERE r.scope = doomed.scope AND r.key = doomed.key
    RETURNING r.scope
)
SELECT count(*) FILTER (WHERE NOT {_IS_CLAIM}) AS records,
       count(*) FILTER (WHERE {_IS_CLAIM}) AS claims
FROM deleted
"""  # noqa: S608 - constant fragments only

# $1 days since publication, $2 rows at most. `published_at IS NOT NULL` twice: in the
# candidates (the partial index) and on the locked row itself.
_DELETE_OUTBOX = """
WITH doomed AS (
    SELECT id FROM outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(days => $1)
    ORDER BY published_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM outbox o USING doomed
    WHERE o.id = doomed.id AND o.published_at IS NOT NULL
    RETURNING o.id
)
SELECT count(*) FROM deleted
"""


def claim_days(record_days: int) -> int:
    """How long provider-event claims are kept: never less than CLAIM_MIN_DAYS."""
    return max(record_days, CLAIM_MIN_DAYS)


async def delete_records(
    connection: asyncpg.Connection, record_days: int, limit: int
) -> tuple[int, int]:
    """One batch of expired idempotency records: (command records, provider claims)."""
    row = await connection.fetchrow(_DELETE_RECORDS, record_days, claim_days(record_days), limit)
    assert row is not None
    return int(row["records"]), int(row["claims"])


async def delete_outbox(connection: asyncpg.Connection, days: int, limit: int) -> int:
    """One batch of outbox rows published more than `days` ago."""
    return int(await connection.fetchval(_DELETE_OUTBOX, days, limit))


# ---- after the retention window: what a command already did ----


def _scope(queue: str) -> str:
    return queue.removeprefix("billing.")


@dataclass(frozen=True, slots=True)
class Derived:
    """Where a command's first run left a row whose id derives from its key."""

    table: str
    id_scope: str  # the first argument of domain.ledger.derived_id
    detail: str  # the name of the id in the refusal's details


# Every command that creates a row with an id derived from (scope, user, key). Their
# first run committed that row together with the idempotency record, so the row without
# the record means the record expired (retention): the command must not run again.
# Keyed by the command's queue scope (the queue's name without `billing.`).
DERIVED: dict[str, Derived] = {
    _scope(names.WALLET_DEPOSIT): Derived("transactions", "deposit", "transaction_id"),
    _scope(names.WALLET_WITHDRAW): Derived("transactions", "withdraw", "transaction_id"),
    _scope(names.INVOICE_PAY): Derived("transactions", "invoice.pay", "transaction_id"),
    _scope(names.INVOICE_CREATE): Derived("invoices", "invoice", "invoice_id"),
    _scope(names.SUBSCRIPTION_CREATE): Derived("subscriptions", "subscription", "subscription_id"),
    _scope(names.WALLET_HOLD): Derived("holds", "hold", "hold_id"),
    _scope(names.WALLET_CREDIT): Derived("transactions", "credit", "transaction_id"),
}
# Of those, the commands that call a payment provider before they write anything: they
# look for their earlier row before every first run (a collision on insert would come
# too late — the provider, whose own idempotency keys expire after a day, would have
# been asked again). The others learn of it from the collision on their row's id.
PROVIDER_FIRST = frozenset({_scope(names.WALLET_DEPOSIT), _scope(names.SUBSCRIPTION_CREATE)})
# The primary keys such a collision is reported on.
DERIVED_KEYS = frozenset({"pk_transactions", "pk_invoices", "pk_subscriptions", "pk_holds"})


async def exists(connection: asyncpg.Connection, table: str, row_id: UUID) -> bool:
    """Whether the row exists, once no other transaction is changing it: the row is
    locked, so a concurrent copy of the command that is finishing it (its second phase
    writes the row and the command's record together) has committed when this returns."""
    assert table in {derived.table for derived in DERIVED.values()}  # our own constants
    found = await connection.fetchval(
        f"SELECT true FROM {table} WHERE id = $1 FOR UPDATE",  # noqa: S608
        row_id,
    )
    return bool(found)
