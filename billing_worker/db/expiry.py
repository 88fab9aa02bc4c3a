"""The reconciler's SQL for expiry: claiming the payments `processing` for too long.

Like `reconciliation.claim_processing`, a claim bumps `updated_at` (a lease against the
other replicas, and against the re-read of stuck payments) and skips locked rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from billing_worker.db.reconciliation import StuckPayment

# Payments the customer has to finish: deposits, and YooKassa subscription charges paid
# through a redirect.
EXPIRING_KINDS = ("deposit", "subscription_charge")

_CLAIM_EXPIRED = """
UPDATE transactions SET updated_at = now()
WHERE id IN (
    SELECT id FROM transactions
    WHERE status = 'processing' AND kind = ANY($1::text[]) AND provider = ANY($2::text[])
      AND provider_ref IS NOT NULL
      AND created_at < now() - make_interval(secs => $3)
      AND updated_at < now() - make_interval(secs => $4)
    ORDER BY updated_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
)
RETURNING id, provider, provider_ref
"""


async def claim_expired(
    connection: asyncpg.Connection,
    providers: Sequence[str],
    expire_after_seconds: float,
    lease_seconds: float,
    limit: int,
) -> list[StuckPayment]:
    """Claim up to `limit` payments of `providers` created over `expire_after_seconds`
    ago, still processing and untouched for `lease_seconds`."""
    rows = await connection.fetch(
        _CLAIM_EXPIRED, list(EXPIRING_KINDS), list(providers), expire_after_seconds,
        lease_seconds, limit,
    )  # fmt: skip
    return [StuckPayment(row["id"], row["provider"], row["provider_ref"]) for row in rows]
