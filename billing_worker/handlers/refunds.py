"""`billing.payment.refund`: refund (part of) a completed payment, in two phases.

Phase one (`refund_payment`), under `FOR UPDATE` on the payment: the owner (another
user's payment is `not_found`), a completed deposit, invoice payment or subscription
charge, an amount no larger than what is left after every refund recorded or in flight
(so concurrent refunds can never add up to more than the payment). `destination:
balance` is instant: the amount goes onto the user's account, no provider is asked (not
for a deposit, whose money is on the balance already; a payment made from the balance is
always refunded to it). `original` takes a deposit's amount off the balance first
(`insufficient_funds` if it was spent: nothing is sent), writes the refund `created` and
its intent. Phase two (`call_refund`) asks the provider with an idempotency key derived
from the refund's id; phase three (`finish_refund`) completes it with the provider's
confirmation, or leaves it `processing` until the webhook or the reconciler confirms it;
a refusal (`undo_refund`) removes it and gives a deposit's amount back.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from billing_contracts.refunds import RefundDestination, RefundPayment, RefundResult
from billing_contracts.wallet import TransactionKind as Kind
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InvalidState,
    NotFound,
    ProviderError,
    TransientError,
)
from billing_worker.domain.ledger import BALANCE, INSTANT, PAYMENT_STEPS, Transaction, derived_id
from billing_worker.domain.money import format_minor, to_wire
from billing_worker.domain.transactions import path, transition
from billing_worker.handlers import receipts, refund_events, views, wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import configured
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import PaymentStatus, RefundRequest
from billing_worker.providers.base import RefundResult as Answer

REFUND = "refund"  # the intent kind
REFUNDABLE = (Kind.DEPOSIT, Kind.INVOICE_PAYMENT, Kind.SUBSCRIPTION_CHARGE)


async def refund_payment(
    command: RefundPayment, uow: UnitOfWork, deps: Deps
) -> Intent | RefundResult:
    payment = await uow.wallet.get(command.transaction_id, lock=True)
    if payment is None or payment.user_id != command.user_id:  # never say another's exists
        raise NotFound(f"no payment {command.transaction_id}",
                       transaction_id=str(command.transaction_id))  # fmt: skip
    if payment.kind not in REFUNDABLE:
        raise InvalidState(f"a {payment.kind} cannot be refunded", transaction_id=str(payment.id))
    if payment.status not in (Status.COMPLETED, Status.REFUNDED):
        raise InvalidState(f"the payment is {payment.status}, not completed",
                           transaction_id=str(payment.id), status=payment.status)  # fmt: skip
    amount = await _amount(command, payment, uow)
    to_balance = payment.provider == BALANCE or command.destination is RefundDestination.BALANCE
    refund_id = derived_id("refund", command.user_id, command.idempotency_key)
    if to_balance:
        if payment.kind == Kind.DEPOSIT:
            raise InvalidState("a deposit is on the balance already: refund it to `original`",
                               transaction_id=str(payment.id))  # fmt: skip
        return await _to_balance(command, payment, refund_id, amount, uow, deps)
    configured(deps, payment.provider)
    if payment.provider_ref is None:
        raise InvalidState("the payment has no provider reference", transaction_id=str(payment.id))
    threshold = deps.low_balance_minor(payment.currency)
    if payment.kind == Kind.DEPOSIT:  # the money leaves the balance before the card gets it
        change = await uow.wallet.move_balance(
            payment.user_id, payment.currency, -amount, threshold
        )
        if change is None:
            raise await wallet.refusal(uow, payment.user_id, payment.currency,
                                       format_minor(amount, payment.currency))  # fmt: skip
        if change.crossed_below:
            uow.emit(views.balance_low(payment.user_id, payment.currency, change))
    await uow.wallet.record(_refund(payment, refund_id, amount, command, uow,
                                    trail=path(Status.CREATED, reason="refund asked")))  # fmt: skip
    request = {"payment_id": str(payment.id), "payment_ref": payment.provider_ref,
               "amount_minor": amount, "currency": payment.currency, "reason": command.reason,
               "threshold_minor": threshold}  # fmt: skip
    # 54-FZ: the refunded part of the payment's receipt, built once (the same body on
    # every attempt under the same idempotency key).
    receipt = await receipts.for_refund(payment, amount, uow, deps)
    if receipt is not None:
        request["receipt"] = receipt
    return Intent(id=refund_id, kind=REFUND, provider=str(payment.provider),
                  user_id=payment.user_id, request=request)  # fmt: skip


async def _amount(command: RefundPayment, payment: TransactionRow, uow: UnitOfWork) -> int:
    """The amount asked (default: all left); no more than what is left."""
    left = payment.amount_minor - refund_events.held_minor(await uow.wallet.refunds_of(payment.id))
    if command.amount is not None and command.amount.currency != payment.currency:
        raise CurrencyMismatch(f"the payment is in {payment.currency}",
                               transaction_id=str(payment.id))  # fmt: skip
    amount = left if command.amount is None else command.amount.minor
    if left <= 0 or amount > left:
        raise InvalidState(
            f"{format_minor(amount, payment.currency)} exceeds what is left to refund "
            f"({format_minor(max(left, 0), payment.currency)})",
            transaction_id=str(payment.id),
            refundable=to_wire(max(left, 0), payment.currency).model_dump(),
        )
    return amount


def _refund(payment: TransactionRow, refund_id: Any, amount: int, command: RefundPayment,
            uow: UnitOfWork, *, trail: list[Any], account: Any = None,
            provider: str | None = None) -> Transaction:  # fmt: skip
    now = uow.clock()
    done = trail[-1].target == Status.COMPLETED
    return Transaction(
        refund_id, payment.user_id,
        account if account else (payment.account_id if payment.kind == Kind.DEPOSIT else None),
        Kind.REFUND, trail[-1].target, amount, payment.currency, provider or payment.provider,
        None, now, now if done else None, trail=tuple(trail),
        description=command.reason or f"refund of {payment.id}", reference=str(payment.id),
        subscription_id=payment.subscription_id, invoice_id=payment.invoice_id,
        refund_of=payment.id,
    )  # fmt: skip


async def _to_balance(command: RefundPayment, payment: TransactionRow, refund_id: Any, amount: int,
                      uow: UnitOfWork, deps: Deps) -> RefundResult:  # fmt: skip
    """Instant: the amount onto the user's account in the payment's currency."""
    account = await uow.wallet.open_account(payment.user_id, payment.currency)
    change = await uow.wallet.move_balance(payment.user_id, payment.currency, amount,
                                           deps.low_balance_minor(payment.currency))  # fmt: skip
    assert change is not None, "the account was just opened"
    row = await uow.wallet.record(_refund(payment, refund_id, amount, command, uow,
                                          trail=path(*INSTANT, reason="refund to the balance"),
                                          account=account, provider=BALANCE))  # fmt: skip
    total = await refund_events.completed(payment, row, uow)
    return await _reply(payment.id, row, total, uow)


async def _reply(
    payment_id: Any, refund: TransactionRow, total: int, uow: UnitOfWork
) -> RefundResult:
    payment = await uow.wallet.get(payment_id)
    assert payment is not None
    return RefundResult(
        refund=views.transaction_out(refund), payment=views.transaction_out(payment),
        refunded_total=to_wire(total, payment.currency),
        destination=refund_events.destination_of(refund),
    )  # fmt: skip


def receipt_fields(intent: Intent) -> dict[str, Any]:
    """Extra fields of the provider's refund body: a YooKassa refund's 54-FZ `receipt`
    (`handlers/receipts.py`), when the payment was paid with one and receipts are on."""
    receipt = intent.request.get("receipt")
    return {"receipt": receipt} if receipt else {}


async def call_refund(intent: Intent, deps: Deps) -> Answer:
    """Phase two: the provider refunds, holding no database connection."""
    request = intent.request
    answer = await configured(deps, intent.provider).refund(
        RefundRequest(
            refund_id=intent.id, payment_ref=str(request["payment_ref"]),
            amount_minor=int(request["amount_minor"]), currency=str(request["currency"]),
            idempotency_key=str(intent.id), reason=request.get("reason"),
            extra=receipt_fields(intent),
        )
    )  # fmt: skip
    if answer.status is PaymentStatus.FAILED:  # no money moved: as if refused outright
        raise ProviderError(f"{intent.provider} refused the refund: {answer.failure_message}")
    if (answer.amount_minor, answer.currency) != (request["amount_minor"], request["currency"]):
        # Not a confirmation of this refund: left for the reconciler and an operator.
        raise TransientError(f"{intent.provider} answered refund {intent.id} with another amount")
    return answer


async def finish_refund(
    intent: Intent, answer: Answer, uow: UnitOfWork, deps: Deps
) -> RefundResult:
    """Phase three: the provider's refund id and answer on the refund."""
    payment_id = _payment_id(intent)
    payment = await uow.wallet.get(payment_id, lock=True)  # the lock order of every refund path
    assert payment is not None
    now = uow.clock()
    row = await uow.wallet.start_payment(intent.id, answer.ref, None, now)
    if row is None:
        raise InvalidState("the refund is no longer waiting for the provider",
                           transaction_id=str(intent.id))  # fmt: skip
    for target in PAYMENT_STEPS[answer.status]:
        confirmation = dict(answer.confirmation or {}) if target is Status.COMPLETED else None
        step = transition(Status(row.status), target, reason=f"{intent.provider} refund")
        moved = await uow.wallet.move_transaction(row.id, step, now, confirmation=confirmation)
        assert moved is not None, "the refund is ours under its intent"
        row = moved
    if row.status == Status.COMPLETED:
        total = await refund_events.completed(payment, row, uow)
    else:
        total = refund_events.completed_minor(await uow.wallet.refunds_of(payment.id))
    return await _reply(payment_id, row, total, uow)


async def undo_refund(intent: Intent, uow: UnitOfWork) -> None:
    """The provider refused: the refund goes, a deposit's amount is back on the balance."""
    payment = await uow.wallet.get(_payment_id(intent), lock=True)
    refund = await uow.wallet.get(intent.id, lock=True)
    if payment is None or refund is None or refund.status != Status.CREATED:
        return
    await uow.wallet.discard_created(intent.id)
    if refund.account_id is not None:
        await uow.wallet.move_balance(refund.user_id, refund.currency, refund.amount_minor,
                                      int(intent.request["threshold_minor"]))  # fmt: skip


def _payment_id(intent: Intent) -> UUID:
    return UUID(str(intent.request["payment_id"]))
