"""The reconciler's SQL: claiming the payments stuck in `processing`.

A claim bumps `updated_at`, a lease that keeps other replicas off the rows for another
`after` seconds; `FOR UPDATE SKIP LOCKED` lets replicas claim at the same time without
waiting on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

_CLAIM = """
UPDATE transactions SET updated_at = now()
WHERE id IN (
    SELECT id FROM transactions
    WHERE status = 'processing' AND provider = ANY($1::text[]) AND provider_ref IS NOT NULL
      AND kind <> 'refund'  -- refunds are re-read as refunds (jobs/reconcile_refunds.py)
      AND updated_at < now() - make_interval(secs => $2)
    ORDER BY updated_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING id, provider, provider_ref
"""


@dataclass(frozen=True, slots=True)
class StuckPayment:
    id: UUID
    provider: str
    provider_ref: str


async def claim_processing(
    connection: asyncpg.Connection, providers: Sequence[str], after_seconds: float, limit: int
) -> list[StuckPayment]:
    """Claim up to `limit` payments of `providers` processing for over `after_seconds`,
    the longest untouched first."""
    rows = await connection.fetch(_CLAIM, list(providers), after_seconds, limit)
    return [StuckPayment(row["id"], row["provider"], row["provider_ref"]) for row in rows]
