"""Expiry: a payment still `processing` `BILLING_PAYMENT_EXPIRE_AFTER_SECONDS` after it
was created is canceled at its provider, as `billing.wallet.deposit.cancel` would,
with `payment.failed` and `failure_code` "expired".

Run by the reconciler before its re-read of stuck payments, in batches with leases like
its other claims. The provider has the last word (`handlers/deposit_cancel.py`): a
payment the customer made before the cancel completes (a deposit is credited once); one
the provider cannot cancel yet (YooKassa, before the customer acted: it cancels those
by itself, and the re-read then fails the transaction) stays processing, claimed again
once its lease lapses. The cancel's idempotency key derives from the transaction id,
so a repeat after a crash finds the same cancel.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.expiry import claim_expired
from billing_worker.handlers.deposit_cancel import EXPIRED_CODE, cancellation_event, inbox
from billing_worker.providers.base import Gateways
from billing_worker.service import BillingService

log = logging.getLogger(__name__)


async def expire_payments(
    engine: AsyncEngine,
    service: BillingService,
    gateways: Gateways,
    *,
    expire_after_seconds: float,
    lease_seconds: float,
    batch: int,
) -> int:
    """Cancel one batch of expired payments; returns how many were settled."""
    async with driver_connection(engine) as db:
        claimed = await claim_expired(
            db, gateways.names, expire_after_seconds, lease_seconds, batch
        )
    settled = 0
    for payment in claimed:
        try:
            result = await gateways.get(payment.provider).cancel_payment(
                payment.provider_ref, f"expire-{payment.id}"
            )
        except Exception as error:  # one provider outage must not stop the others
            log.warning("expiring %s failed: %s", payment.id, error)
            continue
        event = cancellation_event(
            payment.id, payment.provider, payment.provider_ref, result, origin="expiry",
            code=EXPIRED_CODE, message=f"not paid within {expire_after_seconds:g} seconds",
        )  # fmt: skip
        if event is None:
            log.info("%s cannot cancel expired payment %s yet", payment.provider, payment.id)
            continue
        await service.apply_confirmed(event, inbox(payment.provider))
        settled += 1
        log.info("expired transaction %s: %s at %s", payment.id, result.status, payment.provider)
    return settled
