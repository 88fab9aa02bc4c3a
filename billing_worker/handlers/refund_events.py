"""Refunds as they complete: a command's refund the provider confirmed, a pending one
the webhook or the reconciler confirms later, and a refund made at the provider itself
(its dashboard) that arrives by webhook only.

Both paths meet on the provider's refund id: a refund our command made carries it once
the provider answered, so its webhook finds it and never records a second one. While a
command's refund is asked but not answered yet (`created`), a refund webhook of the same
payment waits (TransientError): what it reports may be that very refund. Stripe's
`charge.refunded` tells only the charge's running total; the part of it no refund of
ours accounts for (completed, or pending at Stripe) is recorded as one refund.

Every function here runs in the caller's transaction with the payment row locked first
(payment, then refund, then account: one lock order for every refund path).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from billing_contracts import events as ev
from billing_contracts.refunds import PaymentRefunded, RefundDestination
from billing_contracts.wallet import TransactionKind as Kind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import TransientError, Unprocessable
from billing_worker.domain.events import DomainEvent, ProviderEvent, RefundFacts
from billing_worker.domain.ledger import BALANCE, Transaction
from billing_worker.domain.money import to_wire
from billing_worker.domain.transactions import transition
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import PaymentStatus, RefundResult

log = logging.getLogger(__name__)

_REFUND_IDS = uuid.UUID("9a3c51d2-7f0e-4b8a-b6d4-2e1f0c7a5b93")  # namespace of refund ids
HOLDING = (Status.CREATED, Status.PROCESSING, Status.COMPLETED)  # refunds that count


def held_minor(refunds: list[TransactionRow]) -> int:
    """What the refunds of a payment take of it: completed ones and those in flight."""
    return sum(r.amount_minor for r in refunds if r.status in HOLDING)


def completed_minor(refunds: list[TransactionRow]) -> int:
    return sum(r.amount_minor for r in refunds if r.status == Status.COMPLETED)


def destination_of(refund: TransactionRow) -> RefundDestination:
    return RefundDestination.BALANCE if refund.provider == BALANCE else RefundDestination.ORIGINAL


def refunded_event(payment: TransactionRow, refund: TransactionRow, total: int) -> DomainEvent:
    data = PaymentRefunded(
        transaction_id=payment.id, refund_id=refund.id, user_id=payment.user_id,
        amount=to_wire(refund.amount_minor, refund.currency),
        refunded_total=to_wire(total, payment.currency),
        destination=destination_of(refund), provider=refund.provider,
    )  # fmt: skip
    return DomainEvent(ev.PAYMENT_REFUNDED, data.model_dump(mode="json"))


async def completed(payment: TransactionRow, refund: TransactionRow, uow: UnitOfWork) -> int:
    """A refund just completed: the payment `refunded` once its refunds equal it, and
    `payment.refunded`; the payment's refunded total."""
    total = completed_minor(await uow.wallet.refunds_of(payment.id))
    if total == payment.amount_minor and payment.status == Status.COMPLETED:
        step = transition(Status.COMPLETED, Status.REFUNDED, reason=f"refund {refund.id}")
        await uow.wallet.move_transaction(payment.id, step, uow.clock())
    uow.emit(refunded_event(payment, refund, total))
    return total


async def confirm_pending(
    refund: TransactionRow, result: RefundResult, uow: UnitOfWork, deps: Deps, reason: str
) -> bool:
    """The provider's later word on a refund it answered `pending`: completed with its
    confirmation, or failed (a deposit's amount goes back on the balance). False when
    the refund is no longer pending or the answer is not about it."""
    if (result.amount_minor, result.currency) != (refund.amount_minor, refund.currency):
        log.warning("refund %s: the provider's amount differs; not applied", refund.id)
        return False
    if result.status is PaymentStatus.PENDING or refund.refund_of is None:
        return False
    payment = await uow.wallet.get(refund.refund_of, lock=True)
    current = await uow.wallet.get(refund.id, lock=True)
    if payment is None or current is None or current.status != Status.PROCESSING:
        return False
    now = uow.clock()
    if result.status is PaymentStatus.SUCCEEDED:
        step = transition(Status.PROCESSING, Status.COMPLETED, reason=reason)
        moved = await uow.wallet.move_transaction(
            refund.id, step, now, confirmation=dict(result.confirmation or {})
        )
        assert moved is not None
        await completed(payment, moved, uow)
        return True
    step = transition(Status.PROCESSING, Status.FAILED, reason=reason)
    await uow.wallet.move_transaction(refund.id, step, now, failure_code="refund_failed",
                                      failure_message=result.failure_message)  # fmt: skip
    if refund.account_id is not None:  # a deposit's: the held amount is the user's again
        await uow.wallet.move_balance(refund.user_id, refund.currency, refund.amount_minor,
                                      deps.low_balance_minor(refund.currency))  # fmt: skip
    return True


async def settle_reread(found: tuple[uuid.UUID, RefundResult], uow: UnitOfWork, deps: Deps) -> bool:
    """The reconciler's re-read of a pending refund, applied (`BillingService.apply`)."""
    refund_id, result = found
    refund = await uow.wallet.get(refund_id)
    if refund is None:
        return False
    return await confirm_pending(refund, result, uow, deps, "reconciliation")


async def record(payment: TransactionRow, event: ProviderEvent, uow: UnitOfWork, deps: Deps) -> str:
    """A confirmed refund webhook on the (locked) payment: 'applied', 'stale' or
    'untrusted' (the values of `provider_events.Applied`)."""
    facts = event.refund
    assert facts is not None, "a confirmed refund event carries the provider's refund"
    if Status(payment.status) not in (Status.COMPLETED, Status.REFUNDED):
        raise Unprocessable(f"a refund of transaction {payment.id}, which is {payment.status}")
    refunds = await uow.wallet.refunds_of(payment.id)
    if any(r.status == Status.CREATED for r in refunds):
        raise TransientError(f"a refund of {payment.id} awaits the provider's answer")
    if facts.amount_minor is not None:  # one refund object: ours, if we know its id
        ours = next((r for r in refunds if r.provider_ref == facts.ref), None)
        if ours is not None:
            answer = _as_result(facts, event.confirmation)
            applied = await confirm_pending(ours, answer, uow, deps, event.event_type)
            return "applied" if applied else "stale"
    if facts.currency != payment.currency:
        log.warning("refund %s is in %s, payment %s in %s", facts.ref, facts.currency,
                    payment.id, payment.currency)  # fmt: skip
        return "untrusted"
    # Ours at the provider: completed ones, and pending ones (Stripe counts them in).
    accounted = sum(
        r.amount_minor for r in refunds
        if r.provider != BALANCE and r.status in (Status.PROCESSING, Status.COMPLETED)
    )  # fmt: skip
    amount, ref = _refund_amount(facts, accounted)
    if amount <= 0 or await uow.wallet.transaction_by_ref(payment.provider or "", ref):
        return "stale"  # recorded before (a redelivery, or the running total again)
    if held_minor(refunds) + amount > payment.amount_minor:
        raise Unprocessable(
            f"refund {ref} of {amount} would take the refunds of transaction {payment.id} "
            f"past its amount ({held_minor(refunds)} of {payment.amount_minor} held already)"
        )
    now = uow.clock()
    refund = Transaction.refund(
        payment, uuid.uuid5(_REFUND_IDS, f"{payment.provider}:{ref}"), amount, ref, now,
        reason=event.event_type,
        # What the provider says this refund is: its own amount, or the part of the
        # provider's running total that it records.
        confirmation={**(event.confirmation or {}), "amount_minor": amount},
    )  # fmt: skip
    row = await uow.wallet.record(refund)
    if payment.kind == Kind.DEPOSIT:
        await _take_back(payment, amount, uow, deps)
    await completed(payment, row, uow)
    return "applied"


def _as_result(facts: RefundFacts, confirmation: dict[str, Any] | None) -> RefundResult:
    assert facts.amount_minor is not None
    return RefundResult(facts.ref, PaymentStatus.SUCCEEDED, facts.amount_minor, facts.currency,
                        confirmation=confirmation)  # fmt: skip


def _refund_amount(facts: RefundFacts, accounted: int) -> tuple[int, str]:
    """(amount, provider ref) of the refund to record: one refund object, or the part of
    the provider's running total that no refund of ours accounts for yet."""
    if facts.amount_minor is not None:
        return facts.amount_minor, facts.ref
    assert facts.total_minor is not None
    return facts.total_minor - accounted, f"{facts.ref}:refunded:{facts.total_minor}"


async def _take_back(payment: TransactionRow, amount: int, uow: UnitOfWork, deps: Deps) -> None:
    """The provider returned (part of) a deposit to the card: the wallet gives it back."""
    change = await uow.wallet.move_balance(
        payment.user_id, payment.currency, -amount, deps.low_balance_minor(payment.currency)
    )
    if change is None:  # already spent: the balance may not go negative, a human decides
        raise Unprocessable(
            f"refund of deposit {payment.id} exceeds the {payment.currency} balance of "
            f"{payment.user_id}"
        )
    if change.crossed_below:
        uow.emit(views.balance_low(payment.user_id, payment.currency, change))
