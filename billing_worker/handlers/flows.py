"""The provider calls a command makes in two phases, by intent kind.

Phase one (the handler, in the command's transaction) writes what the call concerns and
an `Intent`, and commits. Then, holding no database connection, `call` asks the provider
with an idempotency key derived from the intent's id (a second call, by a redelivery or
the reconciler, finds the same payment). `finish` records the answer in a second
transaction, which also stores the command's reply; `undo` removes what phase one wrote
when the provider refused outright (a `BillingError` from `call`: nothing exists there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from billing_worker.db.intents import Intent
from billing_worker.handlers import (
    deposit_cancel,
    invoice_cards,
    method_setup,
    payment_methods,
    plan_changes,
    refunds,
    stripe_changes,
    stripe_subscriptions,
    wallet,
    yookassa_subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork


@dataclass(frozen=True, slots=True)
class Flow:
    call: Callable[[Intent, Deps], Awaitable[Any]]
    finish: Callable[[Intent, Any, UnitOfWork, Deps], Awaitable[BaseModel | None]]
    undo: Callable[[Intent, UnitOfWork], Awaitable[None]]


FLOWS: Mapping[str, Flow] = {
    wallet.DEPOSIT: Flow(wallet.call_deposit, wallet.finish_deposit, wallet.undo_deposit),
    # an invoice paid by card: the deposit's call and undo, its own finish
    invoice_cards.INVOICE_CARD: Flow(
        wallet.call_deposit, invoice_cards.finish, wallet.undo_deposit
    ),
    # a YooKassa upgrade's proration (change-plan): the deposit's call, its own finish
    plan_changes.PLAN_CHANGE_CARD: Flow(
        wallet.call_deposit, invoice_cards.finish_plan_change, invoice_cards.undo_plan_change
    ),
    yookassa_subscriptions.CREATE: Flow(
        yookassa_subscriptions.call_charge,
        yookassa_subscriptions.finish_create,
        yookassa_subscriptions.undo_create,
    ),
    yookassa_subscriptions.RENEWAL: Flow(
        yookassa_subscriptions.call_charge,
        yookassa_subscriptions.finish_renewal,
        yookassa_subscriptions.undo_renewal,
    ),
    stripe_subscriptions.CREATE: Flow(
        stripe_subscriptions.call_create,
        stripe_subscriptions.finish_create,
        stripe_subscriptions.undo_create,
    ),
    # the cancel, and the resume, pause and unpause (`request.action`) of Stripe's
    stripe_subscriptions.CANCEL: Flow(
        stripe_changes.call, stripe_changes.finish, stripe_changes.undo
    ),
    deposit_cancel.DEPOSIT_CANCEL: Flow(
        deposit_cancel.call_cancel, deposit_cancel.finish_cancel, deposit_cancel.undo_cancel
    ),
    refunds.REFUND: Flow(refunds.call_refund, refunds.finish_refund, refunds.undo_refund),
    payment_methods.SETUP: Flow(method_setup.call, method_setup.finish, method_setup.undo),
}
