"""Which YooKassa payments carry a 54-FZ receipt, and for whom (phase one of a payment).

With `BILLING_YOOKASSA_RECEIPTS=true` (`Deps.receipts`) every YooKassa payment gets one.
The receipt is built in phase one and kept in the intent's request, so a redelivery or
the reconciler sends the very same body under the same Idempotence-Key; it is also kept
in the transaction's metadata (`{"receipt": ...}`), where a refund finds the items it
gives back (`providers.yookassa.receipts.refund_receipt`).

The contact: the command's `customer_email` / `customer_phone`, else the e-mail stored for
the user (`billing.subscription.create` stores its `email`). Without one the command is
refused `invalid_message` before anything is written or sent — an ordinary refusal, so it
is recorded under the idempotency key like any other (the same key with the contact added
is another payload: `idempotency_conflict`; use a new key).
"""

from __future__ import annotations

import json
from typing import Any

from billing_worker.db.subscriptions import PlanRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidInput
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork
from billing_worker.providers.yookassa import NAME as YOOKASSA
from billing_worker.providers.yookassa import receipts

NO_CONTACT = "no_receipt_contact"  # the failure code of a renewal nobody can get a receipt of


async def contact(
    uow: UnitOfWork, user_id: str, email: str | None = None, phone: str | None = None
) -> receipts.Contact:
    """Where the receipt goes; `invalid_message` when there is nowhere."""
    if email or phone:
        return receipts.Contact(email=email, phone=phone)
    stored = await uow.users.email(user_id)
    if stored:
        return receipts.Contact(email=stored)
    raise InvalidInput(
        "YooKassa receipts are on: the payment needs customer_email or customer_phone "
        "(no e-mail is stored for this user)",
        reason=NO_CONTACT,
    )


async def for_deposit(
    provider: str, user_id: str, amount_minor: int, currency: str, uow: UnitOfWork, deps: Deps,
    *, email: str | None, phone: str | None,
) -> dict[str, Any] | None:  # fmt: skip
    """A deposit's receipt, or None when it needs none (receipts off, not YooKassa)."""
    if deps.receipts is None or provider != YOOKASSA:
        return None
    to = await contact(uow, user_id, email, phone)
    return receipts.deposit_receipt(to, amount_minor, currency, deps.receipts)


async def for_period(
    plan: PlanRow, user_id: str, amount_minor: int, currency: str, uow: UnitOfWork, deps: Deps,
    *, quantity: int = 1,
) -> dict[str, Any] | None:  # fmt: skip
    """A YooKassa subscription charge's receipt (the plan's name and vat_code, one item of
    `quantity` seats at the price of one), or None."""
    if deps.receipts is None:
        return None
    to = await contact(uow, user_id)
    policy = deps.receipts
    return receipts.subscription_receipt(
        to, plan.name, amount_minor, currency, plan.vat_code, policy, quantity
    )


async def for_refund(
    payment: TransactionRow, refund_minor: int, uow: UnitOfWork, deps: Deps
) -> dict[str, Any] | None:
    """The receipt of a refund of `refund_minor` of a YooKassa payment: the refunded part
    of the receipt the payment carried. None when receipts are off, the payment is not
    YooKassa's, or it was paid without a receipt (before receipts were turned on).

    To be sent as the `receipt` of `POST /v3/refunds`, built before the refund's intent
    commits (like a payment's, the same body on every attempt)."""
    if deps.receipts is None or payment.provider != YOOKASSA:
        return None
    paid_with = (await uow.wallet.metadata(payment.id)).get("receipt")
    if not paid_with:
        return None
    return receipts.refund_receipt(paid_with, refund_minor, payment.currency)


def meta(receipt: dict[str, Any] | None) -> str:
    """The transaction's metadata keeping the receipt it was paid with."""
    return "{}" if receipt is None else json.dumps({"receipt": receipt})
