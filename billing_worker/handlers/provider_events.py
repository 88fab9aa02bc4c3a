"""Provider events the provider itself confirmed, moving transactions through the state
machine.

Every event reaching `apply_provider_event` was re-read at the provider (or, for the
sandbox, authenticated by the worker's own key): its status, amount, currency and our
transaction id are the provider's, and they must agree with our row before anything
moves. Refunds are recorded one `refund` transaction each, linked to their payment;
together they never exceed it.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from billing_contracts.wallet import TransactionKind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.payment_methods import Card
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.domain.transactions import can_move, transition
from billing_worker.handlers import (
    invoice_cards,
    method_setup,
    payment_methods,
    refund_events,
    stripe_subscriptions,
    views,
    yookassa_subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.wallet import credit_deposit
from billing_worker.ports import UnitOfWork
from billing_worker.providers.stripe.webhook import SETUP_EVENTS
from billing_worker.providers.yookassa.setup import SETUP_OBJECT

log = logging.getLogger(__name__)

_TARGET = {
    PaymentOutcome.SUCCEEDED: Status.COMPLETED,
    PaymentOutcome.FAILED: Status.FAILED,
    PaymentOutcome.CANCELED: Status.CANCELED,
}


class Applied(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this event id was handled before
    IGNORED = "ignored"  # an event type billing does not act on
    STALE = "stale"  # out of order or repeated: the transaction is already past it
    UNTRUSTED = "untrusted"  # the provider's API does not confirm what the callback says


async def apply_provider_event(
    event: ProviderEvent,
    uow: UnitOfWork,
    deps: Deps,
    inbox: str,
    subscription: stripe_subscriptions.Fetched | None = None,
) -> Applied:
    """Apply one confirmed provider event exactly once; safe to redeliver and to race.

    A subscription event comes with the subscription as re-read from Stripe before the
    transaction opened (`stripe_subscriptions.fetch`): no provider call happens in here.
    """
    if not await uow.idempotency.claim(inbox, event.event_id):
        return Applied.DUPLICATE
    if event.subscription_ref is not None:
        if subscription is None:
            raise TransientError(f"{event.event_type} came without its subscription's state")
        await stripe_subscriptions.sync(event, subscription, uow, deps)
        return Applied.APPLIED
    setup_confirmed = (event.confirmation or {}).get("object") == SETUP_OBJECT
    if setup_confirmed or (event.provider == "stripe" and event.event_type in SETUP_EVENTS):
        saved = await method_setup.saved_by_provider(event, uow)
        return Applied.APPLIED if saved else Applied.UNTRUSTED
    if event.outcome is None or event.provider_ref is None:
        return Applied.IGNORED
    row = await uow.wallet.transaction_by_ref(event.provider, event.provider_ref, lock=True)
    if row is None:
        # The callback can overtake the commit of the command that created the payment:
        # retry later rather than drop it (it is dead-lettered if it never matches).
        raise TransientError(f"no {event.provider} payment {event.provider_ref} (yet)")
    if not _describes(event, row):
        return Applied.UNTRUSTED
    if event.outcome is PaymentOutcome.REFUNDED:
        return await _record_refund(row, event, uow, deps)
    target = _TARGET[event.outcome]
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
        confirmation=event.confirmation,
    )
    if moved is None:  # cannot happen under the row lock; refuse rather than guess
        raise TransientError(f"transaction {row.id} changed under its lock")
    if (
        target is Status.COMPLETED
        and event.saved_method_ref
        and moved.kind == TransactionKind.DEPOSIT
    ):
        # The method the provider says it saved for this payment (never the callback's).
        card = Card(**(event.saved_method_card or {}))
        await payment_methods.remember(
            uow, moved.user_id, event.provider, event.saved_method_ref, card
        )
    if target is Status.COMPLETED and moved.kind == TransactionKind.DEPOSIT:
        if moved.invoice_id is not None:  # an invoice's card payment: credited, then paid
            await invoice_cards.settle(moved, uow, deps)
        else:
            await credit_deposit(moved, uow, deps)
    elif target is Status.COMPLETED:  # a subscription charge paid through its redirect
        uow.emit(views.payment_succeeded(moved))
    elif target in (Status.FAILED, Status.CANCELED):
        uow.emit(views.payment_failed(moved))
        if moved.kind == TransactionKind.DEPOSIT:  # a plan change's proration: it goes
            await invoice_cards.ended(moved, uow)
    if moved.kind == TransactionKind.SUBSCRIPTION_CHARGE:
        await yookassa_subscriptions.settle_from_event(moved, event, uow, deps)
    return Applied.APPLIED


def _describes(event: ProviderEvent, row: TransactionRow) -> bool:
    """Whether what the provider returned is this payment: our id, its amount, currency."""
    mismatches = [
        name
        for name, theirs, ours in (
            ("transaction id", event.transaction_ref, str(row.id)),
            ("amount", event.amount_minor, row.amount_minor),
            ("currency", event.currency, row.currency),
        )
        if theirs is not None and theirs != ours
    ]
    if (
        event.refund is None
        and event.outcome is PaymentOutcome.SUCCEEDED
        and (event.amount_minor is None or event.currency is None)
    ):
        mismatches.append("amount unknown")
    if mismatches:
        log.warning(
            "not applying %s %s to transaction %s: the provider's %s differ",
            event.provider, event.event_type, row.id, ", ".join(mismatches),
        )  # fmt: skip
    return not mismatches


async def _record_refund(
    payment: TransactionRow, event: ProviderEvent, uow: UnitOfWork, deps: Deps
) -> Applied:
    """One refund transaction for what the provider refunded and we have not recorded;
    a refund our command made is recognised by its provider id (`refund_events`)."""
    return Applied(await refund_events.record(payment, event, uow, deps))
