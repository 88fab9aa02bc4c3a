"""Reply objects and event data built from rows: the wire shapes of the message catalogue."""

from __future__ import annotations

from typing import Any

from billing_contracts import events as ev
from billing_contracts.wallet import TransactionOut
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.ledger import BalanceChange
from billing_worker.domain.money import to_wire


def transaction_out(row: TransactionRow) -> TransactionOut:
    return TransactionOut.model_validate(
        {
            "id": row.id,
            "user_id": row.user_id,
            "kind": row.kind,
            "status": row.status,
            "amount": to_wire(row.amount_minor, row.currency),
            "provider": row.provider,
            "created_at": row.created_at,
            "completed_at": row.completed_at,
            "refund_of": row.refund_of,
        }
    )


def _data(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")  # type: ignore[no-any-return]


def payment_succeeded(row: TransactionRow) -> DomainEvent:
    return DomainEvent(
        ev.PAYMENT_SUCCESS,
        _data(
            ev.PaymentSucceeded(
                transaction_id=row.id,
                user_id=row.user_id,
                kind=row.kind,
                amount=to_wire(row.amount_minor, row.currency),
                provider=row.provider,
                provider_ref=row.provider_ref,
                status=row.status,
            )
        ),
    )


def payment_failed(row: TransactionRow) -> DomainEvent:
    return DomainEvent(
        ev.PAYMENT_FAILED,
        _data(
            ev.PaymentFailed(
                transaction_id=row.id,
                user_id=row.user_id,
                kind=row.kind,
                amount=to_wire(row.amount_minor, row.currency),
                provider=row.provider,
                provider_ref=row.provider_ref,
                status=row.status,
                failure_code=row.failure_code,
                failure_message=row.failure_message,
            )
        ),
    )


def deposit_completed(row: TransactionRow, change: BalanceChange) -> DomainEvent:
    return DomainEvent(
        ev.DEPOSIT_COMPLETED,
        _data(
            ev.DepositCompleted(
                transaction_id=row.id,
                user_id=row.user_id,
                amount=to_wire(row.amount_minor, row.currency),
                provider=row.provider,
                balance=to_wire(change.balance_minor, row.currency),
            )
        ),
    )


def withdrawal_completed(row: TransactionRow, change: BalanceChange) -> DomainEvent:
    return DomainEvent(
        ev.WITHDRAWAL_COMPLETED,
        _data(
            ev.WithdrawalCompleted(
                transaction_id=row.id,
                user_id=row.user_id,
                amount=to_wire(row.amount_minor, row.currency),
                balance=to_wire(change.balance_minor, row.currency),
                description=row.description or "",
                reference=row.reference,
            )
        ),
    )


def balance_low(user_id: str, currency: str, change: BalanceChange) -> DomainEvent:
    return DomainEvent(
        ev.BALANCE_LOW,
        _data(
            ev.BalanceLow(
                user_id=user_id,
                currency=currency,
                balance=to_wire(change.balance_minor, currency),
                threshold=to_wire(change.threshold_minor, currency),
            )
        ),
    )
