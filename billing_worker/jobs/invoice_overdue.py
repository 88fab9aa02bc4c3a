"""Overdue invoices: every interval, announce the open invoices past their `due_at`.

Each batch is one transaction (`handlers.invoice_lifecycle.mark_overdue`): up to `batch`
open invoices due before now and not yet announced, locked with `FOR UPDATE SKIP
LOCKED` — one a payment or a void is working on is left alone, and is no longer open
once that commits — each stamped `overdue_at` with `invoice.overdue` in the outbox.
Replicas share the work and announce each invoice once. A round ends when a batch finds
less than a full one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from billing_worker.handlers.invoice_lifecycle import mark_overdue
from billing_worker.jobs.periodic import Periodic
from billing_worker.service import BillingService

log = logging.getLogger(__name__)


@dataclass
class InvoiceOverdue(Periodic):
    service: BillingService
    interval_seconds: float
    batch: int = 100
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run_once(self) -> int:
        """One round: announce everything overdue now; returns how many invoices."""
        announced = 0
        while True:
            found = await self.service.apply(self.batch, mark_overdue)
            announced += found
            if found < self.batch:
                break
        if announced:
            log.info("invoice overdue job announced %d overdue invoices", announced)
        return announced
