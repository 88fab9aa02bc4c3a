"""YooKassa subscriptions: YooKassa has no subscription object, so the worker runs them.

The first period is a payment that saves the card (redirect, or a saved method at
once); later periods are charged by the renewal scheduler with the saved method.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_contracts.wallet import PaymentAction
from billing_contracts.wallet import TransactionStatus as Tx
from billing_worker.db.intents import Intent
from billing_worker.db.payment_methods import Card
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidInput, InvalidState, ProviderError
from billing_worker.domain.events import ProviderEvent
from billing_worker.domain.ledger import Transaction
from billing_worker.handlers import default_method, payment_methods, receipts, views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import record_payment, saved_method_of
from billing_worker.handlers.periods import (
    charge_failed,
    end_subscription,
    insert,
    mark_period_paid,
    period_charge,
)
from billing_worker.handlers.subscription_views import subscription_out
from billing_worker.ports import UnitOfWork
from billing_worker.providers import yookassa as yookassa_provider
from billing_worker.providers.base import (
    PaymentGateway,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    UnknownProvider,
)

NAME = yookassa_provider.NAME


def yookassa(deps: Deps) -> PaymentGateway:
    try:
        return deps.gateways.get(NAME)
    except UnknownProvider:
        raise ProviderError("YooKassa is not configured on this worker") from None


async def attach_saved_method(
    command: CreateSubscription, sub: SubscriptionRow, uow: UnitOfWork
) -> SubscriptionRow:
    """Renew with the method the command names, if it is one saved for this user (else
    `not_found`, before YooKassa is asked for anything)."""
    if not command.payment_method_id:
        return sub
    method = await saved_method_of(uow, sub.user_id, NAME, command.payment_method_id)
    return dataclasses.replace(sub, payment_method_id=method)


async def with_default(command: CreateSubscription, uow: UnitOfWork) -> CreateSubscription:
    """The command naming the user's live YooKassa default when it names no method."""
    method, _ = await default_method.method_for(
        uow, command.user_id, NAME, command.payment_method_id
    )
    return command.model_copy(update={"payment_method_id": method})


CREATE = "yookassa_subscription"  # intent kinds: the first period's payment...
RENEWAL = "yookassa_renewal"  # ...and a later period's charge with the saved method


async def create(
    command: CreateSubscription, sub: SubscriptionRow, uow: UnitOfWork, deps: Deps
) -> Intent:
    """Phase one: the subscription (incomplete) and its first charge, `created`."""
    yookassa(deps)
    command = await with_default(command, uow)
    sub = await attach_saved_method(command, sub, uow)
    receipt = await receipt_of(sub, uow, deps)
    await insert(sub, uow)
    if sub.redemption is not None:  # its first charge (priced with it) is discounted
        await uow.coupons.redeem(sub.id, sub.redemption.coupon.code)
    return await _begin_charge(
        sub, CREATE, command.payment_method_id, command.return_url, uow, receipt
    )


async def renew(sub: SubscriptionRow, uow: UnitOfWork, deps: Deps) -> Intent | None:
    """Phase one of charging the next period with the saved method (the renewal
    scheduler calls the provider after this commits); None when there is no method."""
    method = (
        await uow.subscriptions.payment_method_ref(sub.payment_method_id)
        if sub.payment_method_id
        else None
    )
    if method is None:
        reason = "YooKassa saved no payment method for this subscription"
        await charge_failed(sub, uow, deps, code="no_saved_payment_method", message=reason)
        return None
    yookassa(deps)
    try:
        receipt = await receipt_of(sub, uow, deps)
    except InvalidInput as missing:  # receipts on, nowhere to send one: YooKassa would refuse
        await charge_failed(sub, uow, deps, code=receipts.NO_CONTACT, message=missing.message)
        return None
    intent = await _begin_charge(sub, RENEWAL, method, None, uow, receipt)
    await uow.intents.insert(intent)  # no command to answer: the scheduler's own intent
    return intent


async def receipt_of(sub: SubscriptionRow, uow: UnitOfWork, deps: Deps) -> dict[str, Any] | None:
    """The receipt of the next period's charge (None with receipts off); `invalid_message`
    when the user has no e-mail to send it to."""
    charge = period_charge(sub)
    return await receipts.for_period(
        sub.plan,
        sub.user_id,
        charge.amount_minor,
        charge.currency,
        uow,
        deps,
        quantity=sub.quantity,
    )


async def _begin_charge(
    sub: SubscriptionRow,
    kind: str,
    method: str | None,
    return_url: str | None,
    uow: UnitOfWork,
    receipt: dict[str, Any] | None = None,
) -> Intent:
    """The period's charge, `created`: while it exists the scheduler leaves the
    subscription alone, and its id (per subscription, period and attempt) is the
    provider's idempotency key, so the period is charged at most once."""
    row = await uow.wallet.record(
        Transaction.period_payment(period_charge(sub), uow.clock(), NAME), receipts.meta(receipt)
    )
    request = {
        "amount_minor": row.amount_minor, "currency": row.currency,
        "payment_method_id": method, "return_url": return_url,
        "description": row.description,
    }  # fmt: skip
    if receipt is not None:
        request["receipt"] = receipt
    return Intent(
        id=row.id, kind=kind, provider=NAME, user_id=sub.user_id, subscription_id=sub.id,
        request=request,
    )  # fmt: skip


async def call_charge(intent: Intent, deps: Deps) -> PaymentResult:
    """Phase two: YooKassa is asked, holding no database connection."""
    request = intent.request
    return await yookassa(deps).create_payment(
        PaymentRequest(
            transaction_id=intent.id, user_id=intent.user_id,
            amount_minor=int(request["amount_minor"]), currency=str(request["currency"]),
            idempotency_key=str(intent.id), payment_method_id=request.get("payment_method_id"),
            return_url=request.get("return_url"), description=request.get("description"),
            receipt=request.get("receipt"),
        )
    )  # fmt: skip


async def finish_create(
    intent: Intent, result: PaymentResult, uow: UnitOfWork, deps: Deps
) -> SubscriptionCreated:
    sub = await _settle_charge(intent, result, uow, deps)
    action = PaymentAction.model_validate(result.action) if result.action else None
    return SubscriptionCreated(subscription=subscription_out(sub), payment_action=action)


async def finish_renewal(
    intent: Intent, result: PaymentResult, uow: UnitOfWork, deps: Deps
) -> None:
    await _settle_charge(intent, result, uow, deps)


async def undo_create(intent: Intent, uow: UnitOfWork) -> None:
    """YooKassa refused outright: neither the charge nor the subscription remains."""
    await uow.wallet.discard_created(intent.id)
    assert intent.subscription_id is not None
    await uow.subscriptions.discard_incomplete(intent.subscription_id)


async def undo_renewal(intent: Intent, uow: UnitOfWork) -> None:
    """YooKassa refused outright: the charge goes, the next round tries again."""
    await uow.wallet.discard_created(intent.id)


async def _settle_charge(
    intent: Intent, result: PaymentResult, uow: UnitOfWork, deps: Deps
) -> SubscriptionRow:
    """Phase three: the answer on the charge, then on the subscription (period paid,
    dunning, or nothing yet while the customer follows the redirect)."""
    assert intent.subscription_id is not None
    sub = await uow.subscriptions.get(intent.subscription_id, lock=True)
    if sub is None:
        raise InvalidState("the subscription of a charge is gone",
                           subscription_id=str(intent.subscription_id))  # fmt: skip
    row = await record_payment(intent.id, result, uow, reason="yookassa payment")
    if result.status is PaymentStatus.SUCCEEDED:
        uow.emit(views.payment_succeeded(row))
        if result.saved_method_ref:
            sub = await _remember_method(sub, result.saved_method_ref, uow)
        return await mark_period_paid(sub, row.id, uow)
    if result.status is PaymentStatus.FAILED:
        uow.emit(views.payment_failed(row))
        return await _payment_failed(sub, uow, deps, result.failure_code or "payment_failed")
    return sub  # pending: the customer pays through the redirect; the callback settles it


async def settle_from_event(
    row: TransactionRow, event: ProviderEvent, uow: UnitOfWork, deps: Deps
) -> None:
    """A provider callback settled a subscription charge (payment events already sent)."""
    assert row.subscription_id is not None
    sub = await uow.subscriptions.get(row.subscription_id, lock=True)
    if sub is None:
        return
    if row.status == Tx.COMPLETED:
        if event.saved_method_ref:
            sub = await _remember_method(sub, event.saved_method_ref, uow)
        await mark_period_paid(sub, row.id, uow)
    else:
        await _payment_failed(sub, uow, deps, event.failure_code or "payment_failed")


async def _payment_failed(
    sub: SubscriptionRow, uow: UnitOfWork, deps: Deps, code: str
) -> SubscriptionRow:
    if Sub(sub.status) is Sub.INCOMPLETE:  # the first payment failed: nothing to dun
        return await end_subscription(sub, uow, reason=code)
    await charge_failed(sub, uow, deps, code=code, message="YooKassa declined", record=False)
    return sub


async def _remember_method(sub: SubscriptionRow, ref: str, uow: UnitOfWork) -> SubscriptionRow:
    await payment_methods.remember(uow, sub.user_id, NAME, ref, Card())  # payment_method.saved
    method = await uow.subscriptions.payment_method_id(NAME, ref)
    await uow.subscriptions.update(sub.id, payment_method_id=method)
    return dataclasses.replace(sub, payment_method_id=method)
