"""Canceling a deposit nobody paid: `billing.wallet.deposit.cancel`, and the expiry of
payments still `processing` after `BILLING_PAYMENT_EXPIRE_AFTER_SECONDS` (the reconciler,
`jobs/expiry.py`).

The command runs in the two phases of a provider call (intent kind `deposit_cancel`):
phase one checks the deposit is the user's (another user's is `not_found`, exactly like
one that does not exist) and `processing` (else `invalid_state`), and commits the intent;
phase two asks the provider to cancel, holding no connection; phase three applies what
the provider says the payment now is, under the row's lock, through the same path as a
confirmed provider event (`apply_provider_event`, in the reconciler's inbox):

- canceled: the transaction is `canceled`, `payment.failed` with `failure_code`
  "canceled" (the command) or "expired" (the reconciler);
- succeeded (the customer paid first): the success wins, the deposit is `completed` and
  credited once; the provider's own webhook of it later is stale;
- failed: `failed` with the provider's failure code;
- still pending (YooKassa cannot cancel a payment the customer has not acted on; it
  cancels it by itself later): nothing moves, the reply shows it `processing`.
"""

from __future__ import annotations

import logging
import uuid

from billing_contracts.deposit_cancel import CancelDeposit, CancelDepositResult
from billing_contracts.wallet import TransactionKind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.intents import Intent
from billing_worker.domain.errors import InvalidState, NotFound, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.domain.ledger import derived_id
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import configured
from billing_worker.handlers.provider_events import apply_provider_event
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import PaymentResult, PaymentStatus

log = logging.getLogger(__name__)

DEPOSIT_CANCEL = "deposit_cancel"  # the intent kind
CANCELED_CODE = "canceled"  # failure_code of a deposit canceled by the command
EXPIRED_CODE = "expired"  # ... and of a payment the reconciler expired

_OUTCOMES = {
    PaymentStatus.SUCCEEDED: PaymentOutcome.SUCCEEDED,
    PaymentStatus.CANCELED: PaymentOutcome.CANCELED,
    PaymentStatus.FAILED: PaymentOutcome.FAILED,
}


def inbox(provider: str) -> str:
    """The reconciler's inbox: what a cancel learns is the provider's API answer too, so a
    success it records is not recorded again by the reconciler's re-read."""
    return f"reconcile:{provider}"


async def cancel_deposit(command: CancelDeposit, uow: UnitOfWork, deps: Deps) -> Intent:
    """Phase one: the user's own processing deposit, and the intent to cancel it."""
    row = await uow.wallet.get(command.transaction_id)
    if row is None or row.user_id != command.user_id or row.kind != TransactionKind.DEPOSIT:
        raise NotFound("no such deposit", transaction_id=str(command.transaction_id))
    if Status(row.status) is not Status.PROCESSING or not row.provider or not row.provider_ref:
        raise InvalidState(
            f"the deposit is {row.status}: only a processing deposit can be canceled",
            transaction_id=str(row.id),
            status=row.status,
        )
    gateway = configured(deps, row.provider)
    return Intent(
        id=derived_id(DEPOSIT_CANCEL, command.user_id, command.idempotency_key),
        kind=DEPOSIT_CANCEL, provider=gateway.name, user_id=row.user_id,
        request={"transaction_id": str(row.id), "provider_ref": row.provider_ref},
    )  # fmt: skip


async def call_cancel(intent: Intent, deps: Deps) -> PaymentResult:
    """Phase two: the provider cancels (or tells what the payment became), no connection held."""
    gateway = configured(deps, intent.provider)
    return await gateway.cancel_payment(str(intent.request["provider_ref"]), str(intent.id))


async def finish_cancel(
    intent: Intent, result: PaymentResult, uow: UnitOfWork, deps: Deps
) -> CancelDepositResult:
    """Phase three: the provider's answer on the deposit; the reply is the deposit as it is."""
    transaction_id = uuid.UUID(str(intent.request["transaction_id"]))
    ref = str(intent.request["provider_ref"])
    event = cancellation_event(
        transaction_id, intent.provider, ref, result,
        origin=DEPOSIT_CANCEL, code=CANCELED_CODE, message="canceled at the user's request",
    )  # fmt: skip
    if event is not None:
        await apply_provider_event(event, uow, deps, inbox(intent.provider))
    else:
        log.info("%s cannot cancel deposit %s yet: it stays processing", intent.provider, ref)
    row = await uow.wallet.transaction_by_ref(intent.provider, ref)
    if row is None:  # the deposit was there in phase one, and transactions are not deleted
        raise TransientError(f"deposit {transaction_id} is gone")
    return CancelDepositResult(transaction=views.transaction_out(row))


async def undo_cancel(intent: Intent, uow: UnitOfWork) -> None:
    """The provider refused outright (e.g. it knows no such payment): nothing to undo, the
    deposit stays as it is."""


def cancellation_event(
    transaction_id: uuid.UUID,
    provider: str,
    provider_ref: str,
    result: PaymentResult,
    *,
    origin: str,
    code: str,
    message: str,
) -> ProviderEvent | None:
    """What the provider answered a cancel, as a confirmed event of the payment; None while
    it is still pending there. A cancel carries our `code`; a failure the provider's own."""
    outcome = _OUTCOMES.get(result.status)
    if outcome is None:
        return None
    canceled = outcome is PaymentOutcome.CANCELED
    return ProviderEvent(
        provider=provider,
        event_id=f"{transaction_id}:{outcome.value}",
        outcome=outcome,
        provider_ref=provider_ref,
        event_type=f"{origin}.{outcome.value}",
        failure_code=code if canceled else result.failure_code,
        failure_message=message if canceled else result.failure_message,
        saved_method_ref=result.saved_method_ref,
        amount_minor=result.amount_minor,
        currency=result.currency,
        transaction_ref=result.transaction_ref,
        confirmation=dict(result.confirmation or {}),
    )
