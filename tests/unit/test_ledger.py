"""The ledger's named constructors: each kind of transaction with its columns and trail."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from billing_contracts.wallet import TransactionKind as Kind
from billing_contracts.wallet import TransactionStatus as S
from billing_worker.db.wallet import transaction_row
from billing_worker.domain.errors import InsufficientFunds
from billing_worker.domain.ledger import (
    PAYMENT_STEPS,
    PeriodCharge,
    Transaction,
    insufficient_funds,
)
from billing_worker.domain.transactions import MACHINE
from billing_worker.providers.base import PaymentStatus

NOW = datetime(2030, 5, 1, tzinfo=UTC)
ID, ACCOUNT, SUB = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def moves(tx: Transaction) -> list[tuple[S | None, S, str | None]]:
    return [(step.source, step.target, step.reason) for step in tx.trail]


def test_a_deposit_is_created_without_an_account() -> None:
    tx = Transaction.deposit(ID, "u", 500, "USD", "stripe", NOW)
    assert (tx.kind, tx.status, tx.account_id, tx.provider, tx.completed_at) == (
        Kind.DEPOSIT, S.CREATED, None, "stripe", None,
    )  # fmt: skip
    assert moves(tx) == [(None, S.CREATED, "stripe payment")]


def test_a_withdrawal_is_completed_at_once_on_the_balance() -> None:
    tx = Transaction.withdrawal(ID, "u", ACCOUNT, 500, "USD", NOW, description="d", reference="r")
    assert (tx.kind, tx.status, tx.provider, tx.completed_at) == (
        Kind.WITHDRAWAL, S.COMPLETED, "balance", NOW,
    )  # fmt: skip
    assert (tx.description, tx.reference, tx.account_id) == ("d", "r", ACCOUNT)
    assert moves(tx) == [
        (None, S.CREATED, "withdrawal"),
        (S.CREATED, S.PROCESSING, "withdrawal"),
        (S.PROCESSING, S.COMPLETED, "withdrawal"),
    ]


def test_an_invoice_payment_names_its_invoice() -> None:
    invoice = uuid.uuid4()
    tx = Transaction.invoice_payment(
        ID, "u", ACCOUNT, 500, "USD", NOW, invoice_id=invoice, number="INV-2030-000001"
    )
    assert (tx.kind, tx.invoice_id, tx.description, tx.reference) == (
        Kind.INVOICE_PAYMENT, invoice, "invoice INV-2030-000001", "INV-2030-000001",
    )  # fmt: skip
    assert {step.reason for step in tx.trail} == {"invoice payment"}


def test_the_three_transactions_of_a_period_charge() -> None:
    charge = PeriodCharge(ID, "u", SUB, 900, "EUR", "Pro: period 1")
    paid = Transaction.period_paid(charge, NOW, ACCOUNT)
    declined = Transaction.period_declined(charge, NOW, code="card_declined", message="no")
    started = Transaction.period_payment(charge, NOW, "yookassa")
    for tx in (paid, declined, started):
        assert (tx.id, tx.kind, tx.subscription_id, tx.amount_minor, tx.description) == (
            ID, Kind.SUBSCRIPTION_CHARGE, SUB, 900, "Pro: period 1",
        )  # fmt: skip
    assert (paid.status, paid.provider, paid.account_id, paid.completed_at) == (
        S.COMPLETED, "balance", ACCOUNT, NOW,
    )  # fmt: skip
    assert (declined.status, declined.failure_code, declined.completed_at) == (
        S.FAILED, "card_declined", None,
    )  # fmt: skip
    assert moves(declined) == [(None, S.CREATED, "card_declined"),
                               (S.CREATED, S.FAILED, "card_declined")]  # fmt: skip
    assert (started.status, started.provider) == (S.CREATED, "yookassa")
    assert moves(started) == [(None, S.CREATED, "yookassa payment")]


@pytest.mark.parametrize("paid", [True, False])
def test_a_provider_invoice_is_recorded_as_it_ended(paid: bool) -> None:
    tx = Transaction.provider_invoice(
        ID, "u", 900, "USD", "stripe", "in_1", NOW, paid=paid, failure_code=None,
        subscription_id=SUB, confirmation={"id": "in_1"},
    )  # fmt: skip
    assert tx.status is (S.COMPLETED if paid else S.FAILED)
    assert tx.trail[-1].target is tx.status
    assert tx.provider_confirmation == ({"id": "in_1"} if paid else None)


def test_a_refund_of_a_deposit_leaves_its_account() -> None:
    deposit = dataclasses.replace(
        transaction_row(Transaction.deposit(ID, "u", 500, "USD", "stripe", NOW)),
        account_id=ACCOUNT,
    )
    refund = Transaction.refund(
        deposit, uuid.uuid4(), 200, "re_1", NOW, reason="charge.refunded", confirmation={}
    )
    assert (refund.kind, refund.refund_of, refund.account_id, refund.provider) == (
        Kind.REFUND, ID, ACCOUNT, "stripe",
    )  # fmt: skip
    assert refund.description == f"refund of {ID}"


def test_every_trail_is_one_the_state_machine_allows() -> None:
    for steps in PAYMENT_STEPS.values():
        for source, target in zip((S.CREATED, *steps), steps, strict=False):
            assert MACHINE.can_move(source, target)
    assert set(PAYMENT_STEPS) == {status.value for status in PaymentStatus}


def test_the_insufficient_funds_refusal() -> None:
    refused = insufficient_funds("USD", 150, "2.00", invoice_id="x")
    assert isinstance(refused, InsufficientFunds)
    assert refused.message == "the USD balance 1.50 is less than 2.00"
    assert refused.details == {"balance": {"amount": "1.50", "currency": "USD"}, "invoice_id": "x"}
