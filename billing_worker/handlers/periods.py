"""Paying for billing periods: charges, activation, renewal and dunning.

Shared by subscription creation, the renewal scheduler and provider callbacks. A period
is marked paid by a `subscription_charges` row unique per (subscription, period): a
second charge of the same period cannot commit, whoever attempts it. Each period also
has its invoice (`period_invoices.py`): paid with the charge, left open by a failed one,
voided when the subscription ends unpaid.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from billing_contracts.events import (
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_RENEWED,
)
from billing_contracts.money import MAX_MINOR_UNITS
from billing_contracts.subscriptions import PaymentSource
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.subscriptions import LIVE_UNIQUE, SubscriptionRow
from billing_worker.domain.calendar import period_boundary
from billing_worker.domain.errors import (
    DuplicateKey,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    TransientError,
)
from billing_worker.domain.ledger import PeriodCharge, Transaction
from billing_worker.domain.money import to_wire
from billing_worker.domain.subscriptions import check_move, ending_status, next_attempt
from billing_worker.handlers import period_invoices, views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.subscription_views import subscription_event
from billing_worker.ports import UnitOfWork

_IDS = uuid.UUID("0d9d3f8e-5b7a-4a55-8f43-7d7f4b1c2e90")


def period_bounds(sub: SubscriptionRow, index: int) -> tuple[datetime, datetime]:
    """Period `index` on the plan version the subscription is on, counted from its anchor
    (period `anchor_offset`: a migration to another interval re-anchors at a period end,
    an unpause at the unpause)."""
    anchor = sub.billing_anchor
    assert anchor is not None, "every balance or YooKassa subscription has an anchor"
    plan, since = sub.plan, index - sub.anchor_offset
    assert since >= 0, "no period before the anchor is charged again"
    return (
        period_boundary(anchor, plan.interval, plan.interval_count, since),
        period_boundary(anchor, plan.interval, plan.interval_count, since + 1),
    )


def charge_id(sub: SubscriptionRow, index: int, attempt: int = 0) -> uuid.UUID:
    """One transaction id per (subscription, period, attempt): retries reuse it. After
    an unpause (`restarts`) the re-anchored period's attempts get ids of their own."""
    restart = f":r{sub.restarts}" if sub.restarts else ""
    return uuid.uuid5(_IDS, f"{sub.id}:{index}:{attempt}{restart}")


def period_price(sub: SubscriptionRow) -> int:
    """What one period costs, in minor units: its invoice's total, the plan's price times
    the seats less the subscription's coupon while it lasts, plus the tax of the plan's
    rate when exclusive (inclusive: it is inside)."""
    return period_invoices.period_priced(sub).total_minor


def not_covered(sub: SubscriptionRow, which: str) -> InsufficientFunds:
    """The refusal of a balance period the account cannot pay (`which`: "the first
    period", "a period"), with the period's price in the details."""
    currency = sub.plan.currency
    return InsufficientFunds(
        f"the {currency} balance does not cover {which} of {sub.plan.code}",
        price={"amount": to_wire(period_price(sub), currency).amount, "currency": currency},
    )


def check_price_fits(sub: SubscriptionRow) -> None:
    """`invalid_message` when price x quantity would not fit a BIGINT column."""
    try:
        too_large = period_price(sub) > MAX_MINOR_UNITS
    except InvalidInput:  # the invoice total itself does not fit
        too_large = True
    if too_large:
        raise InvalidInput(
            f"{sub.quantity} x the price of {sub.plan.code} exceeds the largest amount billing "
            f"can hold ({MAX_MINOR_UNITS} minor units)",
            quantity=sub.quantity,
        )


def period_charge(sub: SubscriptionRow) -> PeriodCharge:
    """The charge of the subscription's next period, this attempt."""
    return PeriodCharge(
        id=charge_id(sub, sub.paid_periods, sub.dunning_attempts),
        user_id=sub.user_id,
        subscription_id=sub.id,
        amount_minor=period_price(sub),
        currency=sub.plan.currency,
        description=f"{sub.plan.name}: period {sub.paid_periods + 1}",
    )


async def charge_from_balance(sub: SubscriptionRow, uow: UnitOfWork, deps: Deps) -> bool:
    """Pay the next period from the virtual account; False when the funds are short."""
    now, price, currency = uow.clock(), period_price(sub), sub.plan.currency
    transaction_id = None
    if price > 0:  # a free plan moves no money
        change = await uow.wallet.move_balance(
            sub.user_id, currency, -price, deps.low_balance_minor(currency)
        )
        if change is None:
            return False
        row = await uow.wallet.record(
            Transaction.period_paid(period_charge(sub), now, change.account_id)
        )
        uow.emit(views.payment_succeeded(row))
        if change.crossed_below:
            uow.emit(views.balance_low(sub.user_id, currency, change))
        transaction_id = row.id
    await mark_period_paid(sub, transaction_id, uow)
    return True


class PeriodAlreadyPaid(TransientError):
    """Another writer paid this period first: roll back, the next look sees it paid."""


async def mark_period_paid(
    sub: SubscriptionRow, transaction_id: uuid.UUID | None, uow: UnitOfWork
) -> SubscriptionRow:
    """Record period `sub.paid_periods` as paid and move the subscription on to it."""
    index = sub.paid_periods
    start, end = period_bounds(sub, index)
    charged = await uow.subscriptions.record_charge(
        sub.id, index, start, end, transaction_id, sub.plan_id
    )
    if not charged:
        raise PeriodAlreadyPaid(f"period {index} of subscription {sub.id} is already paid")
    source = Sub(sub.status)
    if source is not Sub.ACTIVE:
        check_move(source, Sub.ACTIVE)
    changes = {
        "status": Sub.ACTIVE.value,
        "current_period_start": start,
        "current_period_end": end,
        "paid_periods": index + 1,
        "dunning_attempts": 0,
        "next_attempt_at": None,
    }
    await uow.subscriptions.update(sub.id, **changes)
    # Last: issuing an invoice takes the year's number row, locked until the commit.
    await period_invoices.paid(sub, index, (start, end), period_charge(sub).amount_minor, uow)
    if period_invoices.discounting(sub) is not None:  # one more charged period discounted
        await uow.coupons.use_period(sub.id)
    moved = dataclasses.replace(sub, **changes)  # type: ignore[arg-type]
    first = source is Sub.INCOMPLETE  # created events announce live subscriptions only
    kind = SUBSCRIPTION_CREATED if first else SUBSCRIPTION_RENEWED
    uow.emit(subscription_event(kind, moved, amount_minor=period_price(sub)))
    return moved


async def charge_failed(
    sub: SubscriptionRow,
    uow: UnitOfWork,
    deps: Deps,
    *,
    code: str,
    message: str,
    record: bool = True,
) -> None:
    """A renewal charge failed: dunning (past_due, retry later) or, at the end, cancel."""
    now = uow.clock()
    if record:  # the provider path already holds its own failed transaction
        declined = Transaction.period_declined(period_charge(sub), now, code=code, message=message)
        row = await uow.wallet.record(declined)
        uow.emit(views.payment_failed(row))
    index = sub.paid_periods  # its invoice, issued open by the first failure
    await period_invoices.unpaid(
        sub, index, period_bounds(sub, index), period_charge(sub).amount_minor, uow
    )
    failures = sub.dunning_attempts + 1
    assert sub.current_period_end is not None
    retry_at = next_attempt(sub.current_period_end, failures, deps.dunning_days)
    if retry_at is None:
        await end_subscription(sub, uow, reason="payment_failed")
        return
    source = Sub(sub.status)
    if source is not Sub.PAST_DUE:
        check_move(source, Sub.PAST_DUE)
    changes = {
        "status": Sub.PAST_DUE.value,
        "dunning_attempts": failures,
        "next_attempt_at": retry_at,
    }
    await uow.subscriptions.update(sub.id, **changes)
    if source is not Sub.PAST_DUE:
        moved = dataclasses.replace(sub, **changes)  # type: ignore[arg-type]
        uow.emit(subscription_event(SUBSCRIPTION_PAST_DUE, moved, reason=code))


async def end_subscription(
    sub: SubscriptionRow, uow: UnitOfWork, *, reason: str
) -> SubscriptionRow:
    """Cancel now (an incomplete one expires instead) and announce it."""
    target = ending_status(Sub(sub.status))
    now = uow.clock()
    changes = {"status": target.value, "canceled_at": now, "cancel_reason": reason,
               "next_attempt_at": None}  # fmt: skip
    await uow.subscriptions.update(sub.id, **changes)
    if sub.payment_source != PaymentSource.STRIPE:  # Stripe's invoices are Stripe's
        await period_invoices.void_unpaid(sub, uow, reason=f"subscription ended: {reason}")
    moved = dataclasses.replace(sub, **changes)  # type: ignore[arg-type]
    if target is Sub.CANCELED:
        uow.emit(subscription_event(SUBSCRIPTION_CANCELED, moved, reason=reason))
    return moved


async def insert(sub: SubscriptionRow, uow: UnitOfWork) -> None:
    """Insert a new subscription; a second live one for the same plan is `invalid_state`."""
    try:
        await uow.subscriptions.insert(sub)
    except DuplicateKey as duplicate:
        if duplicate.constraint == LIVE_UNIQUE:
            raise InvalidState(
                f"{sub.user_id} already has a live {sub.plan.code} subscription",
                plan_code=sub.plan.code,
            ) from None
        raise
