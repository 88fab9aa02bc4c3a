"""Paying an invoice by card: `billing.invoice.pay` with `source` `stripe` or `yookassa`.

Two-phase like a deposit (`handlers/flows.py`): phase one locks the invoice, checks it is
the owner's, payable (open or written off) and has no card payment in flight, and writes
a `deposit` transaction of the invoice total in its currency that names the invoice
(`transactions.invoice_id`), with an intent of kind `INVOICE_CARD`; the provider call
and its answer are the deposit's own (`wallet.call_deposit`, `wallet.undo_deposit`).

Money moves only on what the provider confirms (the reply of a charged saved method, or
an event the worker re-read at the provider, `provider_events`): the confirmed payment
is credited to the owner's wallet as any deposit is, and `settle` then pays the invoice
from that balance in the same transaction — an `invoice_payment` debit of its total,
the invoice `paid`, `invoice.paid`; a subscription period's invoice is paid as its
dunning would (`pay_period_invoice`: the subscription active again). The ledger stays
deposit in, invoice payment out, so the wallet audit holds unchanged.

The invoice is paid only when the confirmed payment is exactly its total and currency
(the payment row is ours: its amount, currency and invoice are what phase one wrote,
the provider's answer having been checked against it). If the invoice is no longer
payable when the confirmation arrives (paid from the balance meanwhile, or the period
settled by the scheduler), the money stays on the wallet balance: never lost, never
taken twice. A payment that fails or is canceled leaves the invoice open, payable again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from uuid import UUID

from billing_contracts import events as ev
from billing_contracts.invoices import InvoicePayResult, PayInvoice
from billing_contracts.invoices import InvoiceStatus as Status
from billing_contracts.subscriptions import SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_contracts.wallet import PaymentAction
from billing_worker.db.intents import Intent
from billing_worker.db.invoices import InvoiceRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import BillingError, InvalidInput, InvalidState
from billing_worker.domain.invoices import transition
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.handlers import plan_changes, receipts, views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.invoice_lifecycle import pay_period_invoice
from billing_worker.handlers.invoice_views import invoice_event, invoice_out, own_invoice
from billing_worker.handlers.payments import configured, saved_method_of
from billing_worker.handlers.subscription_views import subscription_out
from billing_worker.handlers.wallet import Charged, credit_deposit, payment_intent, record_answer
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import PaymentStatus

log = logging.getLogger(__name__)

INVOICE_CARD = "invoice_card"  # the intent kind of a card payment of an invoice
PAYABLE = (Status.OPEN, Status.UNCOLLECTIBLE)


async def start(command: PayInvoice, uow: UnitOfWork, deps: Deps) -> Intent:
    """Phase one: the invoice locked and checked, its card payment `created`."""
    gateway = configured(deps, command.source)
    await own_invoice(uow, command.invoice_id, command.user_id)  # not_found before the lock
    invoice = await uow.invoices.by_id(command.invoice_id, lock=True)
    assert invoice is not None
    transition(Status(invoice.status), Status.PAID)  # paid or void: invalid_state
    if await uow.invoices.card_payment_in_flight(invoice.id):
        raise InvalidState(
            f"a card payment of invoice {invoice.number} is already in flight",
            status=invoice.status, invoice_id=str(invoice.id),
        )  # fmt: skip
    if invoice.total_minor <= 0:
        raise InvalidInput(
            f"invoice {invoice.number} is free: pay it with source balance",
            invoice_id=str(invoice.id),
        )
    if invoice.subscription_id is not None:
        await _period_due(invoice, uow)
    if command.payment_method_id and gateway.trusts_method_ids:
        await saved_method_of(uow, command.user_id, gateway.name, command.payment_method_id)
    currency, amount = invoice.currency, invoice.total_minor
    receipt = await receipts.for_deposit(
        gateway.name, command.user_id, amount, currency, uow, deps,
        email=command.customer_email, phone=command.customer_phone,
    )  # fmt: skip
    # The scope `invoice.pay` is the balance payment's: a key reused after its record
    # expired finds this row (retention.DERIVED) and is not charged again.
    transaction_id = derived_id("invoice.pay", command.user_id, command.idempotency_key)
    payment = Transaction.deposit(
        transaction_id, command.user_id, amount, currency, gateway.name, uow.clock()
    )
    payment = dataclasses.replace(
        payment, invoice_id=invoice.id, description=f"invoice {invoice.number}",
        reference=invoice.number,
    )  # fmt: skip
    meta = {"invoice_id": str(invoice.id), "invoice_number": invoice.number}
    meta.update(json.loads(receipts.meta(receipt)))
    await uow.wallet.record(payment, json.dumps(meta))
    return await payment_intent(
        uow, gateway, INVOICE_CARD, transaction_id, command.user_id, amount, currency,
        payment_method_id=command.payment_method_id, return_url=command.return_url,
        receipt=receipt, invoice_id=str(invoice.id),
    )  # fmt: skip


async def _period_due(invoice: InvoiceRow, uow: UnitOfWork) -> None:
    """A period invoice is payable by card only while it is its subscription's due one."""
    assert invoice.subscription_id is not None
    sub = await uow.subscriptions.get(invoice.subscription_id)
    if (
        sub is None
        or invoice.period_index != sub.paid_periods
        or Sub(sub.status) is not (Sub.PAST_DUE)
    ):
        raise InvalidState(
            f"period {invoice.period_index} of the subscription is not the one due",
            status=invoice.status,
            subscription_status=None if sub is None else sub.status,
        )


async def _recorded(
    intent: Intent, charged: Charged, uow: UnitOfWork, deps: Deps
) -> TransactionRow:
    """The provider's answer on the payment recorded; a payment the provider confirmed at
    once (a saved method) pays the invoice now, a failed one ends (`ended`)."""
    result = charged.result
    row = await record_answer(intent, charged, uow)
    if result.status is PaymentStatus.SUCCEEDED:
        await settle(row, uow, deps)
    elif result.status is PaymentStatus.FAILED:
        uow.emit(views.payment_failed(row))
        await ended(row, uow)
    return row


async def finish(intent: Intent, charged: Charged, uow: UnitOfWork, deps: Deps) -> InvoicePayResult:
    """Phase three: the provider's answer on the payment."""
    result = charged.result
    row = await _recorded(intent, charged, uow, deps)
    assert row.invoice_id is not None
    invoice = await uow.invoices.by_id(row.invoice_id)
    assert invoice is not None
    action = PaymentAction.model_validate(result.action) if result.action else None
    payment = await uow.wallet.get(row.id)
    return InvoicePayResult(
        **invoice_out(invoice).model_dump(),
        payment=views.transaction_out(payment or row),
        payment_action=action,
    )


async def finish_plan_change(
    intent: Intent, charged: Charged, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut:
    """Phase three of a YooKassa upgrade's proration payment (`plan_changes`): the change
    applied if YooKassa confirmed it at once, dropped if it failed; else still pending."""
    await _recorded(intent, charged, uow, deps)
    assert intent.subscription_id is not None
    sub = await uow.subscriptions.get(intent.subscription_id)
    assert sub is not None
    return subscription_out(sub)


async def undo_plan_change(intent: Intent, uow: UnitOfWork) -> None:
    """YooKassa refused the proration payment outright: the payment goes, the pending
    change is dropped and its invoice voided (it was numbered: it stays, void)."""
    await uow.wallet.discard_created(intent.id)
    assert intent.subscription_id is not None
    await plan_changes.payment_ended(
        UUID(str(intent.request["invoice_id"])), intent.subscription_id, uow
    )


async def ended(payment: TransactionRow, uow: UnitOfWork) -> None:
    """A card payment of a pending plan change's proration invoice ended (it names the
    subscription; an invoice's own card payment does not): the change applies or goes."""
    if payment.subscription_id is not None and payment.invoice_id is not None:
        await plan_changes.payment_ended(payment.invoice_id, payment.subscription_id, uow)


async def settle(payment: TransactionRow, uow: UnitOfWork, deps: Deps) -> None:
    """A completed card payment of an invoice: credited to the wallet, then the invoice
    paid from it when it still can be, for exactly this amount and currency; a plan
    change's proration invoice then applies its change (`ended`)."""
    await _settle(payment, uow, deps)
    await ended(payment, uow)


async def _settle(payment: TransactionRow, uow: UnitOfWork, deps: Deps) -> None:
    await credit_deposit(payment, uow, deps)
    assert payment.invoice_id is not None
    invoice = await uow.invoices.by_id(payment.invoice_id, lock=True)
    if invoice is None or invoice.user_id != payment.user_id:
        log.warning("card payment %s names no invoice of its user", payment.id)
        return
    if (invoice.total_minor, invoice.currency) != (payment.amount_minor, payment.currency):
        log.warning("card payment %s is not invoice %s's total: kept on the balance",
                    payment.id, invoice.number)  # fmt: skip
        return
    if Status(invoice.status) not in PAYABLE:
        log.info("invoice %s is %s: card payment %s stays on the balance",
                 invoice.number, invoice.status, payment.id)  # fmt: skip
        return
    if invoice.subscription_id is not None:
        try:
            await pay_period_invoice(invoice, uow, deps)
        except BillingError as refused:  # settled otherwise meanwhile: the money stays
            log.info("invoice %s not paid by card payment %s: %s",
                     invoice.number, payment.id, refused.message)  # fmt: skip
        return
    await pay_from_balance(
        invoice, derived_id("invoice.card", payment.user_id, str(payment.id)), uow, deps
    )


async def pay_from_balance(
    invoice: InvoiceRow, transaction_id: UUID, uow: UnitOfWork, deps: Deps
) -> InvoiceRow:
    """Debit the invoice total (just credited) and mark the invoice paid, `invoice.paid`."""
    paid = await uow.invoices.move(invoice.id, invoice.status, Status.PAID, uow.clock())
    if paid is None:  # under the row lock: a broken invariant; roll back and retry
        raise InvalidState("the invoice changed under its lock", invoice_id=str(invoice.id))
    currency, amount = paid.currency, paid.total_minor
    change = await uow.wallet.move_balance(
        paid.user_id, currency, -amount, deps.low_balance_minor(currency)
    )
    if change is None:  # the payment was just credited: cannot be short
        raise InvalidState("the card payment's credit is not on the balance",
                           invoice_id=str(invoice.id))  # fmt: skip
    debit = Transaction.invoice_payment(
        transaction_id, paid.user_id, change.account_id, amount, currency, uow.clock(),
        invoice_id=paid.id, number=paid.number,
    )  # fmt: skip
    meta = json.dumps({"invoice_id": str(paid.id), "invoice_number": paid.number})
    row = await uow.wallet.record(debit, meta)
    uow.emit(views.payment_succeeded(row))
    if change.crossed_below:
        uow.emit(views.balance_low(paid.user_id, currency, change))
    uow.emit(invoice_event(ev.INVOICE_PAID, paid))
    return paid
