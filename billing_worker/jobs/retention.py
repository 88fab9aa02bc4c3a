"""Retention: every interval, delete what no longer needs keeping, in small batches.

- command idempotency records (their stored replies) older than
  `BILLING_IDEMPOTENCY_RETENTION_DAYS`;
- provider-event claims (`provider:*`, `reconcile:*`) older than that too, but never
  younger than `db.retention.CLAIM_MIN_DAYS` (7): providers redeliver webhooks for up to
  3 days and a claim must outlive every redelivery;
- outbox rows published more than `BILLING_OUTBOX_RETENTION_DAYS` ago. A row not yet
  published is never deleted.

Each batch is one short statement on a connection of its own; between two batches the
job pauses, so the money path always gets the pool and the disks first. Replicas share
the work (`SKIP LOCKED`). A round ends when a batch finds less than a full one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db import retention
from billing_worker.db.engine import driver_connection
from billing_worker.jobs.periodic import Periodic

log = logging.getLogger(__name__)

PROGRESS_EVERY = 50  # batches between two progress lines of a long round


@dataclass
class Retention(Periodic):
    engine: AsyncEngine
    record_days: int
    outbox_days: int
    interval_seconds: float
    batch: int = 1000
    pause_seconds: float = 0.1
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run_once(self) -> Counter[str]:
        """One round: delete until nothing old is left; returns the counts by kind."""
        started = time.monotonic()
        deleted: Counter[str] = Counter()
        batches = 0
        for kind in ("records", "outbox"):
            while True:
                if batches:
                    await asyncio.sleep(self.pause_seconds)
                found = await self._batch(kind, deleted)
                batches += 1
                if batches % PROGRESS_EVERY == 0:
                    log.info("retention in progress: %s in %d batches", _counts(deleted), batches)
                if found < self.batch:
                    break
        if deleted:
            log.info(
                "retention deleted %s in %d batches (%.1f s)",
                _counts(deleted), batches, time.monotonic() - started,
            )  # fmt: skip
        return deleted

    async def _batch(self, kind: str, deleted: Counter[str]) -> int:
        async with driver_connection(self.engine) as db:
            if kind == "records":
                records, claims = await retention.delete_records(db, self.record_days, self.batch)
                deleted["idempotency_records"] += records
                deleted["provider_claims"] += claims
                return records + claims
            rows = await retention.delete_outbox(db, self.outbox_days, self.batch)
            deleted["outbox_rows"] += rows
            return rows


def _counts(deleted: Counter[str]) -> str:
    kinds = ("idempotency_records", "provider_claims", "outbox_rows")
    return ", ".join(f"{deleted[kind]} {kind.replace('_', ' ')}" for kind in kinds)
