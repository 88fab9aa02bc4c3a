"""The renewal scheduler: every interval, renew what is due, one subscription at a time.

Each subscription is renewed in its own transaction, locked with SKIP LOCKED so several
replicas share the work (a provider charge is only begun there, and asked for after the
commit: no lock or connection waits on the provider); the `subscription_charges` unique
key makes a double charge impossible even if two of them did reach the same period. A
replica that dies in the middle leaves an uncommitted transaction behind, which
PostgreSQL rolls back, or a committed charge intent, which the reconciler finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

from billing_worker.db.intents import Intent
from billing_worker.handlers.renewals import RenewalFailed, renew_next
from billing_worker.jobs.periodic import Periodic
from billing_worker.metrics import Metrics
from billing_worker.service import BillingService

log = logging.getLogger(__name__)


@dataclass
class Renewals(Periodic):
    service: BillingService
    interval_seconds: float
    batch: int = 500
    metrics: Metrics | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run_once(self) -> Counter[str]:
        """Renew everything due now (up to `batch`); returns outcomes by kind."""
        outcomes: Counter[str] = Counter()
        skipped: list[UUID] = []
        for _ in range(self.batch):
            try:
                outcome = await self.service.apply(skipped, renew_next)
            except RenewalFailed as failure:  # a provider hiccup: the others still renew
                log.warning("renewal failed, retrying next round: %s", failure)
                skipped.append(failure.subscription_id)
                outcomes["error"] += 1
                continue
            except Exception as error:  # the database is away: stop this round
                log.warning("renewal round stopped: %s", error)
                outcomes["error"] += 1
                break
            if outcome is None:
                break
            if isinstance(outcome, Intent):  # a provider charge: asked after the commit
                skipped.append(outcome.subscription_id or outcome.id)  # once a round
                try:
                    reply = await self.service.settle(outcome)
                except Exception as failure:  # left to the reconciler (same charge id)
                    log.warning("renewal charge %s failed, left to the reconciler: %s",
                                outcome.id, failure)  # fmt: skip
                    outcomes["error"] += 1
                    continue
                outcome = "charged" if reply is None or reply["ok"] else "error"
            outcomes[outcome] += 1
        if outcomes:
            log.info("renewals: %s", dict(outcomes))
            if self.metrics:
                for outcome, count in outcomes.items():
                    self.metrics.renewals.labels(outcome).inc(count)
        return outcomes
