"""Refund commands for handler unit tests: the command, its three phases on the fake unit
of work with the provider's answer given by the test, and the refunds of a payment."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from billing_contracts.refunds import RefundPayment, RefundResult
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import BillingError
from billing_worker.handlers import refunds
from billing_worker.handlers.deps import Deps
from billing_worker.providers.base import PaymentStatus
from billing_worker.providers.base import RefundResult as Answer
from support.fake_uow import FakeDatabase
from support.handler_kit import key, money, run


def refund_command(
    user: str, payment_id: UUID, amount: str | None = None, destination: str = "original",
    currency: str = "USD", **extra: Any,
) -> RefundPayment:  # fmt: skip
    body: dict[str, Any] = {
        "idempotency_key": key(),
        "user_id": user,
        "transaction_id": str(payment_id),
        "destination": destination,
    }
    if amount is not None:
        body["amount"] = money(amount, currency)
    return RefundPayment.model_validate({**body, **extra})


def answer(intent: Intent, status: PaymentStatus = PaymentStatus.SUCCEEDED, **extra: Any) -> Answer:
    """The provider's refund for an intent: its amount, an id of the provider's own."""
    amount, currency = int(intent.request["amount_minor"]), str(intent.request["currency"])
    fields: dict[str, Any] = {
        "confirmation": {"object": "refund", "id": f"re_{intent.id.hex[:12]}",
                         "status": str(status), "amount_minor": amount, "currency": currency},
        **extra,
    }  # fmt: skip
    return Answer(f"re_{intent.id.hex[:12]}", status, amount, currency, **fields)


async def begin(db: FakeDatabase, deps: Deps, command: RefundPayment) -> Intent:
    """Phase one, expected to begin a provider call."""
    intent = await run(db, refunds.refund_payment, command, deps)
    assert isinstance(intent, Intent), intent
    return intent


async def finish(db: FakeDatabase, deps: Deps, intent: Intent, given: Answer) -> RefundResult:
    async with db.transaction() as uow:
        return await refunds.finish_refund(intent, given, uow, deps)


async def undo(db: FakeDatabase, intent: Intent) -> None:
    async with db.transaction() as uow:
        await refunds.undo_refund(intent, uow)


async def refund_through(
    db: FakeDatabase, deps: Deps, command: RefundPayment,
    status: PaymentStatus = PaymentStatus.SUCCEEDED,
) -> RefundResult | BillingError:  # fmt: skip
    """All three phases (or the instant refund to the balance); a refusal is returned."""
    try:
        outcome = await run(db, refunds.refund_payment, command, deps)
    except BillingError as refusal:
        return refusal
    if isinstance(outcome, RefundResult):
        return outcome
    return await finish(db, deps, outcome, answer(outcome, status))


def refunds_of(db: FakeDatabase, payment: TransactionRow) -> list[TransactionRow]:
    return [t for t in db.state.transactions.values() if t.refund_of == payment.id]
