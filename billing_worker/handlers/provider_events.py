"""Verified provider callbacks moving transactions through the state machine."""

from __future__ import annotations

import logging
from enum import StrEnum

from billing_contracts.wallet import TransactionKind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.uow import UnitOfWork
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import TransientError, Unprocessable
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.domain.transactions import can_move, transition
from billing_worker.handlers import stripe_subscriptions, views, yookassa_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.wallet import credit_deposit

log = logging.getLogger(__name__)

_TARGET = {
    PaymentOutcome.SUCCEEDED: Status.COMPLETED,
    PaymentOutcome.FAILED: Status.FAILED,
    PaymentOutcome.CANCELED: Status.CANCELED,
    PaymentOutcome.REFUNDED: Status.REFUNDED,
}


class Applied(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this event id was handled before
    IGNORED = "ignored"  # an event type billing does not act on
    STALE = "stale"  # out of order or repeated: the transaction is already past it
    UNTRUSTED = "untrusted"  # the provider's API does not confirm what the callback says


async def apply_provider_event(event: ProviderEvent, uow: UnitOfWork, deps: Deps) -> Applied:
    """Apply one provider event exactly once; safe to redeliver and to race."""
    if not await uow.idempotency.claim(f"provider:{event.provider}", event.event_id):
        return Applied.DUPLICATE
    if event.subscription_ref is not None:
        await stripe_subscriptions.sync(event, uow, deps)
        return Applied.APPLIED
    target = _TARGET.get(event.outcome) if event.outcome else None
    if target is None or event.provider_ref is None:
        return Applied.IGNORED
    row = await uow.wallet.transaction_by_ref(event.provider, event.provider_ref, lock=True)
    if row is None:
        # The callback can overtake the commit of the command that created the payment:
        # retry later rather than drop it (it is dead-lettered if it never matches).
        raise TransientError(f"no {event.provider} payment {event.provider_ref} (yet)")
    if not can_move(Status(row.status), target):
        log.info("ignoring %s for transaction %s: already %s", event.event_type, row.id, row.status)
        return Applied.STALE
    step = transition(Status(row.status), target, reason=f"{event.provider}:{event.event_type}")
    moved = await uow.wallet.move_transaction(
        row.id,
        step,
        uow.clock(),
        failure_code=event.failure_code,
        failure_message=event.failure_message,
    )
    if moved is None:  # cannot happen under the row lock; refuse rather than guess
        raise TransientError(f"transaction {row.id} changed under its lock")
    if (
        target is Status.COMPLETED
        and event.saved_method_ref
        and moved.kind == TransactionKind.DEPOSIT
    ):
        await uow.users.save_payment_method(moved.user_id, event.provider, event.saved_method_ref)
    if target is Status.COMPLETED and moved.kind == TransactionKind.DEPOSIT:
        await credit_deposit(moved, uow, deps)
    elif target in (Status.FAILED, Status.CANCELED):
        uow.emit(views.payment_failed(moved))
    elif target is Status.REFUNDED and moved.kind == TransactionKind.DEPOSIT:
        await take_back_refunded_deposit(moved, uow, deps)
    if moved.kind == TransactionKind.SUBSCRIPTION_CHARGE and target is not Status.REFUNDED:
        await yookassa_subscriptions.settle_from_event(moved, event, uow, deps)
    return Applied.APPLIED


async def take_back_refunded_deposit(row: TransactionRow, uow: UnitOfWork, deps: Deps) -> None:
    """The provider returned a deposit to the card: the wallet gives the money back."""
    change = await uow.wallet.move_balance(
        row.user_id, row.currency, -row.amount_minor, deps.low_balance_minor(row.currency)
    )
    if change is None:  # already spent: the balance may not go negative, a human decides
        raise Unprocessable(
            f"refund of deposit {row.id} exceeds the {row.currency} balance of {row.user_id}"
        )
    if change.crossed_below:
        uow.emit(views.balance_low(row.user_id, row.currency, change))
