"""The reconciler's part for refunds: a refund the provider answered `pending` and no
webhook confirmed is re-read at the provider, like a stuck payment, and completed (or
failed, a deposit's amount back on the balance) on what the provider's API says."""

from __future__ import annotations

import logging

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.reconciliation import StuckPayment
from billing_worker.handlers import refund_events
from billing_worker.providers.base import Gateways, PaymentStatus
from billing_worker.service import BillingService

log = logging.getLogger(__name__)

# The lease of `db/reconciliation.py`, for refunds (which its claim leaves out).
_CLAIM = """
UPDATE transactions SET updated_at = now()
WHERE id IN (
    SELECT id FROM transactions
    WHERE status = 'processing' AND kind = 'refund' AND provider = ANY($1::text[])
      AND provider_ref IS NOT NULL AND updated_at < now() - make_interval(secs => $2)
    ORDER BY updated_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING id, provider, provider_ref
"""


async def claim_pending(
    connection: asyncpg.Connection, providers: list[str], after_seconds: float, limit: int
) -> list[StuckPayment]:
    rows = await connection.fetch(_CLAIM, providers, after_seconds, limit)
    return [StuckPayment(row["id"], row["provider"], row["provider_ref"]) for row in rows]


async def reconcile_refunds(
    engine: AsyncEngine, service: BillingService, gateways: Gateways, after: float, batch: int
) -> int:
    """Re-read one batch of pending refunds; how many the provider's answer settled."""
    providers = [name for name in gateways.names if gateways.get(name).rereadable]
    async with driver_connection(engine) as db:
        claimed = await claim_pending(db, providers, after, batch)
    settled = 0
    for refund in claimed:
        try:
            result = await gateways.get(refund.provider).fetch_refund(refund.provider_ref)
        except Exception as error:  # one provider outage must not stop the others
            log.warning("reconciling refund %s failed: %s", refund.id, error)
            continue
        if result.status is PaymentStatus.PENDING:
            continue
        if await service.apply((refund.id, result), refund_events.settle_reread):
            settled += 1
            log.info("reconciled refund %s: %s", refund.id, result.status.value)
    return settled
