"""Hold expiry: every interval, release the open holds past their expiry, in batches.

Each batch is one transaction (`handlers.holds.expire_due`): up to `batch` due holds
locked with `FOR UPDATE SKIP LOCKED` — a hold a capture or release is working on is
left alone, and is no longer open once that commits — their accounts locked in one
order, each hold `expired` with `hold.expired` in the outbox. Replicas share the work.
A round ends when a batch finds less than a full one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from billing_worker.handlers.holds import expire_due
from billing_worker.jobs.periodic import Periodic
from billing_worker.service import BillingService

log = logging.getLogger(__name__)


@dataclass
class HoldExpiry(Periodic):
    service: BillingService
    interval_seconds: float
    batch: int = 100
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run_once(self) -> int:
        """One round: release everything due now; returns how many holds expired."""
        expired = 0
        while True:
            found = await self.service.apply(self.batch, expire_due)
            expired += found
            if found < self.batch:
                break
        if expired:
            log.info("hold expiry released %d expired holds", expired)
        return expired
