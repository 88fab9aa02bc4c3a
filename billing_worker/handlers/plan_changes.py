"""`billing.subscription.change-plan`: a user moves a live subscription to another plan
(the current version of a code, its own or another in the same currency) or other seats.

- `now` + `prorate`, an `active` subscription, the same interval: the rest of the paid
  period at the difference of the two period prices (`domain/proration.py`), taxed as a
  period line is: a charge at the new version's rate, a credit at the rate of the
  version the paid period was charged on (`_paid_version`). More: charged now
  (balance: debited in this transaction, `insufficient_funds` refuses the whole change)
  with a paid proration invoice; less: credited to the wallet balance (a `credit`
  transaction). Another interval: the unused part of the paid period is credited (at
  the paid version's rate) and a new period at the new terms starts now, charged in
  full like any period.
- `now` + `none` (and any `now` change of a `trialing` subscription, which has paid
  nothing): switched now, no money moves; the next renewal charges the new terms (another
  interval counts from the end of the paid period, as `billing.plan.migrate` does).
- A YooKassa upgrade (`now` + `prorate`, same interval, more to pay): the same figure and
  tax, charged with the subscription's saved YooKassa method in two phases
  (`_start_card_payment`): the proration invoice issued `open`, the change remembered
  (`pending_*`), a `deposit` of the invoice total naming invoice and subscription
  (intent `plan_change_card`). When YooKassa confirms it, `invoice_cards.settle` pays
  the invoice and `payment_ended` applies the change in the same transaction; a failed,
  canceled or refused payment drops the change and voids the invoice. While it waits,
  another change and a cancel now are `invalid_state` (in flight).
- A Stripe-run subscription: at Stripe first (`_at_stripe`, `stripe_changes`), same
  interval only; Stripe prorates (`now` + `prorate`: its invoice of the change, paid at
  once) and ours follows Stripe's answer.
- `period_end`: stored on the subscription; the renewal of the paid period applies it
  (`apply_scheduled`), then charges the new terms (after a pause: the unpause does). A
  later change-plan replaces it, a change back to the current terms drops it, a cancel
  drops it.

Every change is one `subscription_plan_changes` row (kind `change_plan`), the first period
it governs being the next one, so the audit's "no period charged on a version its
subscription was not on" holds. Not built yet: another interval with `prorate` for a
YooKassa subscription (`invalid_message`; `none` and `period_end` work) and for a
Stripe-run one.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from billing_contracts.events import INVOICE_CREATED, INVOICE_PAID, INVOICE_VOIDED
from billing_contracts.invoices import InvoiceStatus
from billing_contracts.plan_changes import ChangePlan, ChangeWhen, Proration
from billing_contracts.subscriptions import PaymentSource, SubscriptionOut
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.invoices import InvoiceRow, NewInvoice
from billing_worker.db.subscriptions import PlanChange, PlanRow, SubscriptionRow
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
)
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.invoices import Line, Priced, issue, taxed
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.money import to_wire
from billing_worker.domain.plan_versions import Anchor, reanchored
from billing_worker.domain.proration import prorated
from billing_worker.domain.taxes import TaxRate
from billing_worker.handlers import coupons, receipts, stripe_changes, views, yookassa_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.invoice_views import invoice_event
from billing_worker.handlers.periods import charge_from_balance, check_price_fits, not_covered
from billing_worker.handlers.subscription_views import subscription_out, subscription_updated
from billing_worker.ports import UnitOfWork

_CHANGEABLE = (Sub.ACTIVE, Sub.TRIALING)
PLAN_CHANGE_CARD = "plan_change_card"  # the intent kind of a YooKassa upgrade's payment


async def change_plan(command: ChangePlan, uow: UnitOfWork, deps: Deps) -> SubscriptionOut | Intent:
    sub = await _changeable(command, uow)
    target = await uow.plans.by_code(command.plan_code)
    if target is None or not target.active:
        raise NotFound(f"no active plan {command.plan_code!r}", plan_code=command.plan_code)
    if target.currency != sub.plan.currency:
        raise CurrencyMismatch(
            f"the subscription pays in {sub.plan.currency}; {target.code} is priced in "
            f"{target.currency}",
            subscription_id=str(sub.id),
        )
    quantity = command.quantity if command.quantity is not None else sub.quantity
    if command.coupon is not None:
        if sub.payment_source == PaymentSource.STRIPE:
            raise InvalidInput(
                "a Stripe-run subscription's coupon is given to Stripe when it is created",
                coupon=command.coupon,
            )
        await coupons.redeem(uow, sub, command.coupon)  # from the next charged period
        if (target.id, quantity) == (sub.plan_id, sub.quantity):
            return await _reloaded(sub, uow)  # only the coupon changes
        sub = await _reload(sub, uow)
    if (target.id, quantity) == (sub.plan_id, sub.quantity):
        if command.when is ChangeWhen.PERIOD_END and sub.scheduled_plan_id is not None:
            await uow.subscriptions.update(sub.id, scheduled_plan_id=None, scheduled_quantity=None)
            return await _reloaded(sub, uow)  # back to the current terms: the change dropped
        raise InvalidInput(
            f"the subscription is on {target.code} version {target.version} with "
            f"{quantity} seat(s) already: nothing changes",
            plan_code=target.code,
        )
    check_price_fits(dataclasses.replace(sub, plan=target, plan_id=target.id, quantity=quantity))
    await _check_code_free(sub, target, uow)
    if sub.payment_source == PaymentSource.STRIPE:
        return _at_stripe(command, sub, target, quantity, deps)
    if command.when is ChangeWhen.PERIOD_END:
        await uow.subscriptions.update(
            sub.id, scheduled_plan_id=target.id, scheduled_quantity=quantity
        )
        found = await _reload(sub, uow)
        terms = dataclasses.replace(found, plan=target, plan_id=target.id, quantity=quantity)
        uow.emit(_updated(sub, terms, found.current_period_end, command, scheduled=True))
        return subscription_out(found)
    if command.proration is Proration.NONE or Sub(sub.status) is Sub.TRIALING:
        await _switch_at_period_end_terms(sub, target, quantity, uow, proration_minor=None)
        found = await _reload(sub, uow)
        uow.emit(_updated(sub, found, uow.clock(), command))
        return subscription_out(found)
    return await _prorate(command, sub, target, quantity, uow, deps)


def _at_stripe(
    command: ChangePlan, sub: SubscriptionRow, target: PlanRow, quantity: int, deps: Deps
) -> Intent:
    """A Stripe-run subscription changes at Stripe first (`stripe_changes`): its item onto
    the target's Stripe price; `now` + `prorate` of an active one is invoiced by Stripe at
    once (`always_invoice`), anything else bills the new price from Stripe's next
    invoice (`none`). Ours switches when Stripe's answer shows the change."""
    if not target.stripe_price_id:
        raise InvalidInput(
            f"plan {target.code} version {target.version} has no stripe_price_id",
            plan_code=target.code,
        )
    if not _same_interval(sub.plan, target):
        raise InvalidInput(
            "a Stripe-run subscription cannot change to another interval yet",
            plan_code=target.code,
        )
    invoiced = (
        command.when is ChangeWhen.NOW
        and command.proration is Proration.PRORATE
        and Sub(sub.status) is Sub.ACTIVE
    )
    return stripe_changes.begin(
        command, sub, deps, "change_plan",
        change={"price_ref": target.stripe_price_id, "quantity": quantity,
                "proration_behavior": "always_invoice" if invoiced else "none",
                "plan_code": target.code, "plan_version": target.version,
                "when": command.when.value, "proration": command.proration.value},
    )  # fmt: skip


async def _changeable(command: ChangePlan, uow: UnitOfWork) -> SubscriptionRow:
    """The user's subscription, locked, in a state a change may start from."""
    sub = await uow.subscriptions.get(command.subscription_id, lock=True)
    if sub is None or sub.user_id != command.user_id:  # another's: exactly as a missing one
        raise NotFound(f"no subscription {command.subscription_id}")
    status = Sub(sub.status)
    if status not in _CHANGEABLE:
        raise InvalidState(f"a {sub.status} subscription cannot change plan", status=sub.status)
    if sub.cancel_at_period_end or sub.pause_at_period_end:
        what = "canceling" if sub.cancel_at_period_end else "pausing"
        raise InvalidState(f"the subscription is {what} at its period end", status=sub.status)
    if (
        sub.pending_invoice_id is not None  # a prorated change waits for its payment
        or await uow.intents.of_subscription(sub.id)
        or await uow.subscriptions.charging([sub.id])
    ):
        raise InvalidState(
            "a payment for this subscription is in flight; try again shortly", status=sub.status
        )
    if sub.current_period_start is None or sub.current_period_end is None:
        raise InvalidState("the subscription has no current period", status=sub.status)
    return sub


async def _check_code_free(sub: SubscriptionRow, target: PlanRow, uow: UnitOfWork) -> None:
    """One live subscription per user and plan code: moving onto a code the user has a
    live subscription to is `invalid_state` (the index would refuse it)."""
    if target.code == sub.plan.code:
        return
    for other in await uow.subscriptions.of_user(sub.user_id):
        if other.id != sub.id and other.plan.code == target.code and Sub(other.status) in (
            Sub.INCOMPLETE, Sub.TRIALING, Sub.ACTIVE, Sub.PAST_DUE, Sub.PAUSED,
        ):  # fmt: skip
            raise InvalidState(
                f"{sub.user_id} already has a live {target.code} subscription",
                plan_code=target.code,
            )


def _same_interval(a: PlanRow, b: PlanRow) -> bool:
    return (a.interval, a.interval_count) == (b.interval, b.interval_count)


async def _switch_at_period_end_terms(
    sub: SubscriptionRow,
    target: PlanRow,
    quantity: int,
    uow: UnitOfWork,
    *,
    proration_minor: int | None,
) -> None:
    """On `target` x `quantity` from the next period on (another interval counts from the
    end of the paid period); the paid period stays as it was."""
    _, anchor = _next_period(sub, target)
    await uow.subscriptions.change_plan(
        PlanChange(
            sub=sub, to=target, quantity=quantity, anchor=anchor.at, anchor_offset=anchor.offset,
            from_period_index=sub.paid_periods, effective_at=uow.clock(),
            proration_minor=proration_minor,
        )
    )  # fmt: skip


async def _paid_version(sub: SubscriptionRow, uow: UnitOfWork) -> PlanRow:
    """The version (and its copy of the tax rate) the current period was paid on: the
    subscription's own may be a later one (a `none` change or a migrate switched it for
    the next period)."""
    if sub.paid_periods > 0:
        paid = await uow.subscriptions.charged_plan(sub.id, sub.paid_periods - 1)
        if paid is not None:
            return paid
    return sub.plan


def _rate_of(plan: PlanRow) -> TaxRate | None:
    if plan.tax_rate_code is None or plan.tax_percent is None:
        return None
    return TaxRate(plan.tax_rate_code, "", plan.tax_percent, bool(plan.tax_inclusive))


def _proration_line(text: str, net_minor: int, plan: PlanRow) -> Line:
    """One unit of the prorated net amount, taxed at `plan`'s rate like a period line."""
    return taxed(Line(text, 1, net_minor, net_minor), _rate_of(plan))


async def _prorate(
    command: ChangePlan,
    sub: SubscriptionRow,
    target: PlanRow,
    quantity: int,
    uow: UnitOfWork,
    deps: Deps,
) -> SubscriptionOut | Intent:
    start, end, now = sub.current_period_start, sub.current_period_end, uow.clock()
    assert start is not None
    assert end is not None
    same = _same_interval(sub.plan, target)
    yookassa = sub.payment_source == PaymentSource.YOOKASSA
    old_net = sub.plan.price_minor * sub.quantity
    new_net = target.price_minor * quantity
    if same:
        net = prorated(new_net - old_net, start, end, now)
        text = f"{sub.plan.name} -> {target.name}: {now:%Y-%m-%d} to {end:%Y-%m-%d}"
        # a charge at the new version's rate; a credit gives back part of what the paid
        # period was charged, so at the rate of the version it was paid on
        taxed_as = target if net > 0 else await _paid_version(sub, uow)
        line = _proration_line(text, abs(net), taxed_as)
        if yookassa and net > 0:  # charged with the saved method; switched on its confirmation
            return await _start_card_payment(command, sub, target, quantity, line, uow, deps)
        moved = line.total_minor if net > 0 else -line.total_minor if net < 0 else 0
        await _switch_at_period_end_terms(sub, target, quantity, uow, proration_minor=moved)
        if net > 0:
            await _charge(command, sub, line, uow, deps)
        elif net < 0:
            await _credit(command, sub, line.total_minor, uow, deps)
        found = await _reload(sub, uow)
        uow.emit(_updated(sub, found, now, command, moved=moved))
        return subscription_out(found)
    if yookassa:
        raise InvalidInput(
            "a prorated change of a YooKassa subscription to another interval is not "
            "supported yet; use proration none or when period_end"
        )
    # Another interval: the unused part of the paid period back, a new period from now.
    unused = -prorated(-old_net, start, end, now)
    text = f"{sub.plan.name}: unused {now:%Y-%m-%d} to {end:%Y-%m-%d}"
    credit = _proration_line(text, unused, await _paid_version(sub, uow)).total_minor
    await uow.subscriptions.change_plan(
        PlanChange(
            sub=sub, to=target, quantity=quantity, anchor=now, anchor_offset=sub.paid_periods,
            from_period_index=sub.paid_periods, effective_at=now, proration_minor=-credit,
        )
    )  # fmt: skip
    if credit > 0:
        await _credit(command, sub, credit, uow, deps)
    switched = await _reload(sub, uow)
    if not await charge_from_balance(switched, uow, deps):
        raise not_covered(switched, "the first period")
    found = await _reload(sub, uow)
    uow.emit(_updated(sub, found, now, command, moved=-credit))
    return subscription_out(found)


async def _proration_invoice(
    command: ChangePlan, sub: SubscriptionRow, line: Line, uow: UnitOfWork
) -> InvoiceRow:
    """The change's numbered proration invoice, issued `open` (`invoice.created`)."""
    currency, now = sub.plan.currency, uow.clock()
    priced = Priced(currency, (line,), line.net_minor, line.total_minor, line.tax_minor)
    new = NewInvoice(
        id=derived_id("proration-invoice", sub.user_id, command.idempotency_key),
        user_id=sub.user_id, order_id=None, status=issue().value, priced=priced, due_at=None,
        created_at=now,
    )  # fmt: skip
    invoice = await uow.invoices.create(new)
    assert invoice is not None, "only an invoiced order makes create() return None"
    uow.emit(invoice_event(INVOICE_CREATED, invoice))
    return invoice


async def _start_card_payment(
    command: ChangePlan,
    sub: SubscriptionRow,
    target: PlanRow,
    quantity: int,
    line: Line,
    uow: UnitOfWork,
    deps: Deps,
) -> Intent:
    """A YooKassa upgrade, phase one: the proration invoice issued `open`, the change
    remembered on the subscription (`pending_*`), and a payment of the invoice total with
    the subscription's saved YooKassa method `created` (a `deposit` naming the invoice and
    the subscription, as `invoice_cards` pays an invoice by card). The subscription stays
    on its terms until YooKassa confirms that payment (`payment_ended`)."""
    gateway = yookassa_subscriptions.yookassa(deps)  # provider_error when not configured
    method = (
        await uow.subscriptions.payment_method_ref(sub.payment_method_id)
        if sub.payment_method_id
        else None
    )
    if method is None:
        raise InvalidState(
            "the subscription has no saved YooKassa payment method to charge the proration "
            "with; use proration none or when period_end",
            status=sub.status, reason="no_saved_payment_method",
        )  # fmt: skip
    currency, amount = sub.plan.currency, line.total_minor
    receipt = await receipts.for_deposit(
        gateway.name, sub.user_id, amount, currency, uow, deps, email=None, phone=None
    )
    invoice = await _proration_invoice(command, sub, line, uow)
    transaction_id = derived_id("proration-card", sub.user_id, command.idempotency_key)
    payment = dataclasses.replace(
        Transaction.deposit(transaction_id, sub.user_id, amount, currency, gateway.name,
                            uow.clock()),
        invoice_id=invoice.id, subscription_id=sub.id, description=f"invoice {invoice.number}",
        reference=invoice.number,
    )  # fmt: skip
    meta: dict[str, Any] = {"invoice_id": str(invoice.id), "invoice_number": invoice.number}
    meta.update(json.loads(receipts.meta(receipt)))
    await uow.wallet.record(payment, json.dumps(meta))
    await uow.subscriptions.update(
        sub.id, pending_plan_id=target.id, pending_quantity=quantity,
        pending_invoice_id=invoice.id,
    )  # fmt: skip
    request: dict[str, Any] = {
        "amount_minor": amount, "currency": currency, "payment_method_id": method,
        "return_url": None, "default_method": False, "invoice_id": str(invoice.id),
        "description": f"invoice {invoice.number}",
    }  # fmt: skip
    if receipt is not None:
        request["receipt"] = receipt
    return Intent(
        id=transaction_id, kind=PLAN_CHANGE_CARD, provider=gateway.name, user_id=sub.user_id,
        subscription_id=sub.id, request=request,
    )  # fmt: skip


async def payment_ended(
    invoice_id: UUID, subscription_id: UUID, uow: UnitOfWork
) -> SubscriptionRow | None:
    """The proration payment of a pending change ended (confirmed, failed, canceled, or
    refused outright): with its invoice paid (by this payment, or from the balance
    meanwhile) the change applies now, in this transaction; otherwise it is dropped and
    the invoice, if still open, voided. Locks the invoice, then the subscription, as
    `invoice_cards.settle` does. None when the subscription has no such pending change
    (settled before: a duplicate is a no-op)."""
    invoice = await uow.invoices.by_id(invoice_id, lock=True)
    sub = await uow.subscriptions.get(subscription_id, lock=True)
    if invoice is None or sub is None or sub.pending_invoice_id != invoice.id:
        return None
    if InvoiceStatus(invoice.status) is InvoiceStatus.PAID:
        return await _apply_pending(sub, invoice, uow)
    await _drop_pending(sub, uow)
    if InvoiceStatus(invoice.status) in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        voided = await uow.invoices.move(
            invoice.id, invoice.status, InvoiceStatus.VOID, uow.clock(),
            "its plan change's payment did not succeed",
        )  # fmt: skip
        if voided is not None:
            uow.emit(invoice_event(INVOICE_VOIDED, voided))
    return await _reload(sub, uow)


async def _drop_pending(sub: SubscriptionRow, uow: UnitOfWork) -> None:
    await uow.subscriptions.update(
        sub.id, pending_plan_id=None, pending_quantity=None, pending_invoice_id=None
    )


async def _apply_pending(
    sub: SubscriptionRow, invoice: InvoiceRow, uow: UnitOfWork
) -> SubscriptionRow:
    """The confirmed change: on the target x seats from the next period (as a balance
    upgrade is), the invoice total recorded as the change's proration."""
    assert sub.pending_plan_code is not None
    assert sub.pending_plan_version is not None
    assert sub.pending_quantity is not None
    target = await uow.plans.version(sub.pending_plan_code, sub.pending_plan_version)
    assert target is not None, "a plan version row is never deleted"
    quantity, now = sub.pending_quantity, uow.clock()
    await _drop_pending(sub, uow)
    try:
        await _check_code_free(sub, target, uow)
    except InvalidState:  # the user took a live subscription to that code meanwhile
        await _unapplied(sub, invoice, uow)
        return await _reload(sub, uow)
    await _switch_at_period_end_terms(
        sub, target, quantity, uow, proration_minor=invoice.total_minor
    )
    found = await _reload(sub, uow)
    uow.emit(
        subscription_updated(
            found, sub.plan.version, now, change="change_plan", from_plan_code=sub.plan.code,
            from_quantity=sub.quantity, when=ChangeWhen.NOW.value, scheduled=False,
            proration=Proration.PRORATE.value,
            charged=to_wire(invoice.total_minor, sub.plan.currency),
        )
    )  # fmt: skip
    return found


async def _unapplied(sub: SubscriptionRow, invoice: InvoiceRow, uow: UnitOfWork) -> None:
    """A confirmed proration whose change can no longer apply (the target's code is taken
    by another live subscription of the user): the plan stays, and the paid proration is
    credited back to the wallet balance (a `credit`), never kept for nothing."""
    user, currency, amount = sub.user_id, invoice.currency, invoice.total_minor
    account_id = await uow.wallet.open_account(user, currency)
    change = await uow.wallet.move_balance(user, currency, amount, 0)
    if change is None:  # a credit never lacks funds and its account was just opened
        raise InvalidState("the credit's account does not exist", user_id=user)
    await uow.wallet.record(
        Transaction.credit(
            derived_id("proration-unapplied", user, str(invoice.id)), user, account_id,
            amount, currency, uow.clock(),
            reason=f"proration of invoice {invoice.number} back: subscription {sub.id} "
            "could not change plan",
        )
    )  # fmt: skip


async def _charge(
    command: ChangePlan, sub: SubscriptionRow, line: Line, uow: UnitOfWork, deps: Deps
) -> None:
    """Debit the proration from the balance and pay its invoice (one numbered invoice,
    issued and paid at once, in the year's gap-free sequence)."""
    currency, now, total = sub.plan.currency, uow.clock(), line.total_minor
    change = await uow.wallet.move_balance(
        sub.user_id, currency, -total, deps.low_balance_minor(currency)
    )
    if change is None:  # the whole command rolls back: the subscription stays as it was
        raise InsufficientFunds(
            f"the {currency} balance does not cover the proration of the change",
            price={"amount": to_wire(total, currency).amount, "currency": currency},
        )
    key = command.idempotency_key
    invoice = await _proration_invoice(command, sub, line, uow)
    row = await uow.wallet.record(
        dataclasses.replace(
            Transaction.invoice_payment(
                derived_id("proration-charge", sub.user_id, key), sub.user_id,
                change.account_id, total, currency, now, invoice_id=invoice.id,
                number=invoice.number,
            ),
            subscription_id=sub.id,
        )
    )  # fmt: skip
    paid = await uow.invoices.move(invoice.id, InvoiceStatus.OPEN, InvoiceStatus.PAID, now)
    assert paid is not None, "an invoice issued in this transaction is open"
    uow.emit(invoice_event(INVOICE_PAID, paid))
    uow.emit(views.payment_succeeded(row))
    if change.crossed_below:
        uow.emit(views.balance_low(sub.user_id, currency, change))


async def _credit(
    command: ChangePlan, sub: SubscriptionRow, amount_minor: int, uow: UnitOfWork, deps: Deps
) -> None:
    """The unused difference onto the wallet balance: a `credit` transaction."""
    user, currency = sub.user_id, sub.plan.currency
    account_id = await uow.wallet.open_account(user, currency)
    change = await uow.wallet.move_balance(
        user, currency, amount_minor, deps.low_balance_minor(currency)
    )
    if change is None:  # a credit never lacks funds and its account was just opened
        raise InvalidState("the credit's account does not exist", user_id=user)
    await uow.wallet.record(
        Transaction.credit(
            derived_id("proration-credit", user, command.idempotency_key), user, account_id,
            amount_minor, currency, uow.clock(),
            reason=f"proration credit: subscription {sub.id} changed plan",
        )
    )  # fmt: skip


async def apply_scheduled(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionRow:
    """The renewal of a paid period applies the change scheduled for its end: the next
    period (about to be charged) is the first on the new terms. A target whose code the
    user has meanwhile subscribed to is dropped (the subscription renews as it was)."""
    if sub.scheduled_plan_code is None or sub.scheduled_plan_version is None:
        return sub
    assert sub.scheduled_quantity is not None
    target = await uow.plans.version(sub.scheduled_plan_code, sub.scheduled_plan_version)
    assert target is not None, "a scheduled plan version row is never deleted"
    try:
        await _check_code_free(sub, target, uow)
    except InvalidState:
        await uow.subscriptions.update(sub.id, scheduled_plan_id=None, scheduled_quantity=None)
        return await _reload(sub, uow)
    end, anchor = _next_period(sub, target)
    await uow.subscriptions.change_plan(
        PlanChange(
            sub=sub, to=target, quantity=sub.scheduled_quantity, anchor=anchor.at,
            anchor_offset=anchor.offset, from_period_index=sub.paid_periods, effective_at=end,
        )
    )  # fmt: skip
    found = await _reload(sub, uow)
    uow.emit(
        subscription_updated(
            found, sub.plan.version, end, change="change_plan", from_plan_code=sub.plan.code,
            from_quantity=sub.quantity, when=ChangeWhen.PERIOD_END.value, scheduled=False,
            proration=None,
        )
    )  # fmt: skip
    return found


def _updated(
    before: SubscriptionRow,
    after: SubscriptionRow,
    effective_at: datetime | None,
    command: ChangePlan,
    *,
    scheduled: bool = False,
    moved: int | None = None,
) -> DomainEvent:
    assert effective_at is not None
    currency = before.plan.currency
    return subscription_updated(
        after, before.plan.version, effective_at, change="change_plan",
        from_plan_code=before.plan.code, from_quantity=before.quantity,
        when=command.when.value, scheduled=scheduled,
        proration=None if scheduled else command.proration.value,
        charged=to_wire(moved, currency) if moved and moved > 0 else None,
        credited=to_wire(-moved, currency) if moved and moved < 0 else None,
    )  # fmt: skip


async def _reload(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionRow:
    found = await uow.subscriptions.get(sub.id)
    assert found is not None
    return found


async def _reloaded(sub: SubscriptionRow, uow: UnitOfWork) -> SubscriptionOut:
    return subscription_out(await _reload(sub, uow))


def _next_period(sub: SubscriptionRow, target: PlanRow) -> tuple[datetime, Anchor]:
    """Where the paid period ends and the anchor the periods on `target` count from (the
    same interval: as before; another: from that end, as `billing.plan.migrate` does)."""
    end = sub.current_period_end
    assert end is not None
    assert sub.billing_anchor is not None
    anchor = reanchored(
        Anchor(sub.billing_anchor, sub.anchor_offset), sub.paid_periods, end,
        _same_interval(sub.plan, target),
    )  # fmt: skip
    return end, anchor
