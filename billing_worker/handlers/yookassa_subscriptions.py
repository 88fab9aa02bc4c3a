"""YooKassa subscriptions: YooKassa has no subscription object, so the worker runs them.

The first period is a payment that saves the card (redirect, or a saved method at
once); later periods are charged by the renewal scheduler with the saved method.
"""

from __future__ import annotations

import dataclasses

from billing_contracts.subscriptions import CreateSubscription, SubscriptionCreated
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_contracts.wallet import PaymentAction
from billing_contracts.wallet import TransactionStatus as Tx
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.db.uow import UnitOfWork
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import ProviderError
from billing_worker.domain.events import ProviderEvent
from billing_worker.domain.transactions import path
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import (
    charge_failed,
    charge_row,
    end_subscription,
    insert,
    mark_period_paid,
)
from billing_worker.handlers.subscription_views import subscription_out
from billing_worker.handlers.wallet import saved_method_of
from billing_worker.providers.base import (
    PaymentGateway,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    UnknownProvider,
)

NAME = "yookassa"


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


async def create(
    command: CreateSubscription, sub: SubscriptionRow, uow: UnitOfWork, deps: Deps
) -> SubscriptionCreated:
    gateway = yookassa(deps)
    sub = await attach_saved_method(command, sub, uow)
    await insert(sub, uow)
    result = await _charge(gateway, sub, command.payment_method_id, command.return_url, uow)
    sub = await _settle_now(sub, result, uow, deps)
    action = PaymentAction.model_validate(result.action) if result.action else None
    return SubscriptionCreated(subscription=subscription_out(sub), payment_action=action)


async def renew(sub: SubscriptionRow, uow: UnitOfWork, deps: Deps) -> None:
    """Charge the next period with the saved method (called by the renewal scheduler)."""
    method = (
        await uow.subscriptions.payment_method_ref(sub.payment_method_id)
        if sub.payment_method_id
        else None
    )
    if method is None:
        reason = "YooKassa saved no payment method for this subscription"
        await charge_failed(sub, uow, deps, code="no_saved_payment_method", message=reason)
        return
    result = await _charge(yookassa(deps), sub, method, None, uow)
    await _settle_now(sub, result, uow, deps)


async def _charge(
    gateway: PaymentGateway,
    sub: SubscriptionRow,
    method: str | None,
    return_url: str | None,
    uow: UnitOfWork,
) -> PaymentResult:
    row = charge_row(sub, uow.clock(), provider=NAME)
    result = await gateway.create_payment(
        PaymentRequest(
            transaction_id=row.id, user_id=sub.user_id, amount_minor=sub.plan.price_minor,
            currency=sub.plan.currency, idempotency_key=str(row.id), payment_method_id=method,
            return_url=return_url, description=row.description,
        )
    )  # fmt: skip
    outcome = {
        PaymentStatus.PENDING: (Tx.CREATED, Tx.PROCESSING),
        PaymentStatus.SUCCEEDED: (Tx.CREATED, Tx.PROCESSING, Tx.COMPLETED),
        PaymentStatus.FAILED: (Tx.CREATED, Tx.FAILED),
    }[result.status]
    row = dataclasses.replace(
        row, status=outcome[-1], provider_ref=result.provider_ref,
        completed_at=row.completed_at if result.status is PaymentStatus.SUCCEEDED else None,
        failure_code=result.failure_code, failure_message=result.failure_message,
        provider_confirmation=(
            dict(result.confirmation or {}) if result.status is PaymentStatus.SUCCEEDED else None
        ),
    )  # fmt: skip
    await uow.wallet.add_transaction(row, path(*outcome, reason="yookassa payment"))
    return result


async def _settle_now(
    sub: SubscriptionRow, result: PaymentResult, uow: UnitOfWork, deps: Deps
) -> SubscriptionRow:
    row = charge_row(sub, uow.clock(), provider=NAME, provider_ref=result.provider_ref)
    if result.status is PaymentStatus.SUCCEEDED:
        uow.emit(views.payment_succeeded(row))
        if result.saved_method_ref:
            sub = await _remember_method(sub, result.saved_method_ref, uow)
        return await mark_period_paid(sub, row.id, uow)
    if result.status is PaymentStatus.FAILED:
        failed = dataclasses.replace(row, status=Tx.FAILED, completed_at=None,
                                     failure_code=result.failure_code)  # fmt: skip
        uow.emit(views.payment_failed(failed))
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
    await uow.users.save_payment_method(sub.user_id, NAME, ref)
    method = await uow.subscriptions.payment_method_id(NAME, ref)
    await uow.subscriptions.update(sub.id, payment_method_id=method)
    return dataclasses.replace(sub, payment_method_id=method)
