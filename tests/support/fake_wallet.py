"""The fake wallet and users: `billing_worker.ports.Wallet` and `Users` on `FakeState`.

Each method does what its SQL in `billing_worker/db/wallet.py` and `users.py` does, guard
for guard (tests/contract/test_repository_contract.py runs both on the same cases).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from billing_worker.db.columns import (
    TRANSACTION_KINDS,
    TRANSACTION_PROVIDERS,
    TRANSACTION_STATUSES,
)
from billing_worker.db.wallet import TransactionRow, transaction_row
from billing_worker.domain.ledger import BalanceChange, Transaction
from billing_worker.domain.transactions import Transition
from support.fake_state import (
    CUSTOMER_PROVIDERS,
    AccountRow,
    FakeState,
    MethodRow,
    check_violation,
    unique_violation,
)

State = Callable[[], FakeState]  # the state of the running transaction


class FakeWallet:
    def __init__(self, state: State) -> None:
        self._state = state

    async def open_account(self, user_id: str, currency: str) -> UUID:
        state = self._state()
        state.ensure_user(user_id)
        return state.accounts.setdefault((user_id, currency), AccountRow(uuid4())).id

    async def move_balance(
        self, user_id: str, currency: str, delta_minor: int, threshold_minor: int
    ) -> BalanceChange | None:
        account = self._state().accounts.get((user_id, currency))
        if account is None or account.balance_minor - account.held_minor + delta_minor < 0:
            return None
        was_low = account.low_alerted
        account.balance_minor += delta_minor
        account.low_alerted = account.balance_minor < threshold_minor
        return BalanceChange(
            account_id=account.id,
            balance_minor=account.balance_minor,
            crossed_below=account.low_alerted and not was_low,
            threshold_minor=threshold_minor,
        )

    async def debit_many(
        self, debits: Sequence[tuple[str, str, int, int]]
    ) -> list[BalanceChange | None]:
        return [
            await self.move_balance(user, currency, -amount, threshold)
            for user, currency, amount, threshold in debits
        ]

    async def balances(self, user_id: str, currency: str | None = None) -> list[tuple[str, int]]:
        return sorted(
            (cur, account.balance_minor)
            for (user, cur), account in self._state().accounts.items()
            if user == user_id and currency in (None, cur)
        )

    async def add_transaction(
        self, row: TransactionRow, trail: list[Transition], meta: str = "{}"
    ) -> None:
        state = self._state()
        state.refer_to_user(row.user_id, "transactions")
        check_row(row)
        if row.id in state.transactions:
            raise unique_violation("transactions_pkey")
        if row.provider_ref is not None and any(
            (t.provider, t.provider_ref) == (row.provider, row.provider_ref)
            for t in state.transactions.values()
        ):
            raise unique_violation("uq_transactions_provider_ref")
        state.transactions[row.id] = row
        state.trails[row.id] = list(trail)
        state.metadata[row.id] = meta

    async def record(self, transaction: Transaction, meta: str = "{}") -> TransactionRow:
        row = transaction_row(transaction)  # the SQL repository's own mapping
        await self.add_transaction(row, list(transaction.trail), meta)
        return row

    async def move_transaction(
        self,
        transaction_id: UUID,
        step: Transition,
        at: datetime,
        *,
        failure_code: str | None = None,
        failure_message: str | None = None,
        confirmation: dict[str, Any] | None = None,
    ) -> TransactionRow | None:
        state = self._state()
        row = state.transactions.get(transaction_id)
        if row is None or row.status != step.source:
            return None
        completes = step.target in ("completed", "refunded")
        moved = dataclasses.replace(
            row,
            status=step.target,
            completed_at=row.completed_at or (at if completes else None),
            failure_code=_coalesce(failure_code, row.failure_code),
            failure_message=_coalesce(failure_message, row.failure_message),
            provider_confirmation=_coalesce(confirmation, row.provider_confirmation),
        )
        state.transactions[transaction_id] = moved
        state.trails[transaction_id].append(step)
        return moved

    async def refunded_minor(self, payment_id: UUID) -> int:
        return sum(
            t.amount_minor
            for t in self._state().transactions.values()
            if t.refund_of == payment_id and t.status == "completed"
        )

    async def metadata(self, transaction_id: UUID) -> dict[str, Any]:
        return dict(json.loads(self._state().metadata.get(transaction_id, "{}")))

    async def start_payment(
        self, transaction_id: UUID, provider_ref: str | None, account_id: UUID | None, at: datetime
    ) -> TransactionRow | None:
        state = self._state()
        row = state.transactions.get(transaction_id)
        if row is None or row.status != "created" or row.provider_ref is not None:
            return None
        started = dataclasses.replace(
            row, provider_ref=provider_ref, account_id=_coalesce(account_id, row.account_id)
        )
        state.transactions[transaction_id] = started
        return started

    async def discard_created(self, transaction_id: UUID) -> None:
        state = self._state()
        row = state.transactions.get(transaction_id)
        if row is not None and row.status == "created" and row.provider_ref is None:
            del state.transactions[transaction_id], state.trails[transaction_id]

    async def get(self, transaction_id: UUID, *, lock: bool = False) -> TransactionRow | None:
        return self._state().transactions.get(transaction_id)

    async def refunds_of(self, payment_id: UUID) -> list[TransactionRow]:
        rows = [t for t in self._state().transactions.values() if t.refund_of == payment_id]
        return sorted(rows, key=lambda t: (t.created_at, t.id))

    async def transaction_by_ref(
        self, provider: str, provider_ref: str, *, lock: bool = False
    ) -> TransactionRow | None:
        return next(
            (
                t
                for t in self._state().transactions.values()
                if (t.provider, t.provider_ref) == (provider, provider_ref)
            ),
            None,
        )

    async def transactions_page(
        self, user_id: str, currency: str | None, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[TransactionRow]:
        rows = [
            t
            for t in self._state().transactions.values()
            if t.user_id == user_id
            and currency in (None, t.currency)
            and (after is None or (t.created_at, t.id) < after)
        ]
        rows.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return rows[:limit]


def check_row(row: TransactionRow) -> None:
    """The CHECK constraints of `transactions` (billing_worker/db/tables_core.py)."""
    check_violation("transactions", "kind", row.kind in TRANSACTION_KINDS)
    check_violation("transactions", "status", row.status in TRANSACTION_STATUSES)
    check_violation("transactions", "amount_positive", row.amount_minor > 0)
    check_violation("transactions", "provider", row.provider in (None, *TRANSACTION_PROVIDERS))
    completes = row.status in ("completed", "refunded")
    check_violation("transactions", "completed_at", completes == (row.completed_at is not None))


def _coalesce(value: Any, default: Any) -> Any:
    return default if value is None else value


class FakeUsers:
    def __init__(self, state: State) -> None:
        self._state = state

    async def ensure(self, user_id: str) -> None:
        self._state().ensure_user(user_id)

    async def customer_ref(self, user_id: str, provider: str) -> str | None:
        assert provider in CUSTOMER_PROVIDERS, provider  # the SQL has a column for these only
        user = self._state().users.get(user_id)
        return None if user is None else user.customers.get(provider)

    async def remember_customer(self, user_id: str, provider: str, customer_ref: str) -> str:
        assert provider in CUSTOMER_PROVIDERS, provider
        user = self._state().users[user_id]
        return user.customers.setdefault(provider, customer_ref)

    async def save_payment_method(self, user_id: str, provider: str, method_ref: str) -> None:
        self._state().methods.setdefault((provider, method_ref), MethodRow(uuid4(), user_id))

    async def payment_method_of(self, user_id: str, provider: str, method_ref: str) -> UUID | None:
        method = self._state().methods.get((provider, method_ref))
        live = method is not None and method.detached_at is None  # never charged once detached
        return method.id if method is not None and live and method.user_id == user_id else None

    async def email(self, user_id: str) -> str | None:
        user = self._state().users.get(user_id)
        return None if user is None else user.email
