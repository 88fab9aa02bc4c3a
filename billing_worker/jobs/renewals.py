"""The renewal scheduler: every interval, renew what is due, one subscription at a time.

Each subscription is renewed in its own transaction, locked with SKIP LOCKED so several
replicas share the work; the `subscription_charges` unique key makes a double charge
impossible even if two of them did reach the same period. A replica that dies in the
middle leaves an uncommitted transaction behind, which PostgreSQL rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from billing_worker.handlers.renewals import renew_next
from billing_worker.service import BillingService

log = logging.getLogger(__name__)


@dataclass
class Renewals:
    service: BillingService
    interval_seconds: float
    batch: int = 500
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run_once(self) -> Counter[str]:
        """Renew everything due now (up to `batch`); returns outcomes by kind."""
        outcomes: Counter[str] = Counter()
        for _ in range(self.batch):
            try:
                outcome = await self.service.apply(None, renew_next)
            except Exception as error:  # a provider or database hiccup: next round retries
                log.warning("renewal failed, retrying next round: %s", error)
                outcomes["error"] += 1
                break
            if outcome is None:
                break
            outcomes[outcome] += 1
        if outcomes:
            log.info("renewals: %s", dict(outcomes))
        return outcomes

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="renewals")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.run_once()
