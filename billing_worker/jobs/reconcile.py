"""Reconciliation: re-read from the provider every payment stuck in `processing`, and
finish every provider call a crash left half done.

A webhook can be lost (endpoint down for longer than the provider retries, a
misconfigured secret). Every `interval`, each replica claims a batch of transactions
that have been processing for longer than `after` seconds — the claim bumps
`updated_at`, a lease that keeps other replicas off them for another `after` seconds —
asks the provider for the truth and applies it through the same path as a confirmed
webhook.

A worker can also die between the phases of a provider call (`provider_intents`: the
intent committed, the provider's answer not yet recorded). Intents untouched for `after`
seconds are claimed the same way and settled like the command would have: the provider
call is issued again with the same idempotency key — the provider returns the payment
(subscription, cancel) the first call made, or makes it now — and its answer is
recorded with the command's reply, which a redelivery of the command then replays.
`after` must exceed the provider timeout, or a slow call still in flight is repeated
(harmless: the same key, and only one of the two records the answer).

Each round first cancels at their providers the payments processing for longer than
`expire_after_seconds` (`jobs/expiry.py`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.intents import SqlIntents
from billing_worker.db.reconciliation import StuckPayment, claim_processing
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.jobs.expiry import expire_payments
from billing_worker.jobs.periodic import Periodic
from billing_worker.jobs.reconcile_refunds import reconcile_refunds
from billing_worker.providers.base import Gateways, PaymentResult, PaymentStatus
from billing_worker.service import BillingService

log = logging.getLogger(__name__)

_OUTCOMES = {
    PaymentStatus.SUCCEEDED: PaymentOutcome.SUCCEEDED,
    PaymentStatus.FAILED: PaymentOutcome.FAILED,
}


@dataclass
class Reconciler(Periodic):
    engine: AsyncEngine
    service: BillingService
    gateways: Gateways
    after_seconds: float
    interval_seconds: float
    batch: int = 50
    expire_after_seconds: float = 86400.0  # then a processing payment is canceled
    _task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Reconcile one batch; returns how many transactions (and half-done provider
        calls, expired payments and refunds) were settled."""
        expired = await expire_payments(
            self.engine, self.service, self.gateways, batch=self.batch,
            expire_after_seconds=self.expire_after_seconds, lease_seconds=self.after_seconds,
        )  # fmt: skip
        refunds = await reconcile_refunds(
            self.engine, self.service, self.gateways, self.after_seconds, self.batch
        )
        return expired + await self._processing() + refunds + await self._intents()

    async def _intents(self) -> int:
        async with driver_connection(self.engine) as db:
            claimed = await SqlIntents(db).claim_stale(self.after_seconds, self.batch)
        settled = 0
        for intent in claimed:
            try:
                await self.service.settle(intent)
            except Exception as error:  # one provider outage must not stop the others
                log.warning("finishing %s %s failed: %s", intent.kind, intent.id, error)
                continue
            settled += 1
            log.info("finished %s %s at %s", intent.kind, intent.id, intent.provider)
        return settled

    async def _processing(self) -> int:
        providers = [name for name in self.gateways.names if self.gateways.get(name).rereadable]
        async with driver_connection(self.engine) as db:
            claimed = await claim_processing(db, providers, self.after_seconds, self.batch)
        settled = 0
        for payment in claimed:
            try:
                result = await self.gateways.get(payment.provider).fetch_payment(
                    payment.provider_ref
                )
            except Exception as error:  # one provider outage must not stop the others
                log.warning("reconciling %s failed: %s", payment.id, error)
                continue
            outcome = _OUTCOMES.get(result.status)
            if outcome is None:
                continue
            # Its own inbox: no callback on the queue can claim a reconciliation's id.
            await self.service.apply_confirmed(
                _event(payment, outcome, result), f"reconcile:{payment.provider}"
            )
            settled += 1
            log.info(
                "reconciled transaction %s: %s at %s", payment.id, outcome.value, payment.provider
            )
        return settled


def _event(payment: StuckPayment, outcome: PaymentOutcome, result: PaymentResult) -> ProviderEvent:
    """What the provider's API answered, as a confirmed event of the payment."""
    return ProviderEvent(
        provider=payment.provider,
        event_id=f"{payment.id}:{outcome.value}",
        outcome=outcome,
        provider_ref=payment.provider_ref,
        event_type=f"reconciliation.{outcome.value}",
        failure_code=result.failure_code,
        failure_message=result.failure_message,
        saved_method_ref=result.saved_method_ref,
        amount_minor=result.amount_minor,
        currency=result.currency,
        transaction_ref=result.transaction_ref,
        confirmation=dict(result.confirmation or {}),
    )
