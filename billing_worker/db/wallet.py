"""The wallet's repository: accounts and transactions, each change in one conditional
statement (the statements are in `db/wallet_sql.py`).

Balances move only through `UPDATE ... SET balance_minor = balance_minor +/- $n` with the
guard in the WHERE clause, so concurrent commands can neither overdraw an account nor
lose an update (READ COMMITTED re-checks the guard on the newest row version).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from billing_worker.db import wallet_sql as sql
from billing_worker.domain.ledger import BalanceChange, Transaction
from billing_worker.domain.transactions import Transition


@dataclass(frozen=True, slots=True)
class TransactionRow:
    id: UUID
    user_id: str
    account_id: UUID | None
    kind: str
    status: str
    amount_minor: int
    currency: str
    provider: str | None
    provider_ref: str | None
    created_at: datetime
    completed_at: datetime | None
    description: str | None = None
    reference: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    subscription_id: UUID | None = None
    invoice_id: UUID | None = None
    refund_of: UUID | None = None  # a refund: the payment it gives back
    provider_confirmation: dict[str, Any] | None = None  # what the provider's API said


def _row(record: Any) -> TransactionRow:
    values = {name: record[name] for name in TransactionRow.__slots__}
    if isinstance(values["provider_confirmation"], str):  # jsonb arrives as text
        values["provider_confirmation"] = json.loads(values["provider_confirmation"])
    return TransactionRow(**values)


def transaction_row(transaction: Transaction) -> TransactionRow:
    """The row of a new transaction: its columns are the entity's fields, but the trail."""
    return TransactionRow(**{name: getattr(transaction, name) for name in TransactionRow.__slots__})


def _change(record: Any, account_id: UUID, threshold_minor: int) -> BalanceChange:
    return BalanceChange(
        account_id=account_id,
        balance_minor=record["balance_minor"],
        crossed_below=record["is_low"] and not record["was_low"],
        threshold_minor=threshold_minor,
    )


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class SqlWallet:
    """Accounts and transactions of one database transaction.

    With `defer_inserts` (a coalesced batch's unit of work) `add_transaction` only
    collects the rows: `flush_deferred` writes them all, with their audit trails, in one
    statement before the commit. Until then they cannot be read back.
    """

    def __init__(
        self,
        connection: asyncpg.Connection,
        on_transition: Callable[[str, Transition], None] | None = None,
        *,
        defer_inserts: bool = False,
    ) -> None:
        self._db = connection
        self._observe = on_transition or (lambda _kind, _step: None)
        self._deferred: list[tuple[TransactionRow, list[Transition], str]] | None = (
            [] if defer_inserts else None
        )

    async def open_account(self, user_id: str, currency: str) -> UUID:
        """The user's account in `currency`, created (with the user) on first use."""
        while True:
            account_id = await self._db.fetchval(
                sql.OPEN_ACCOUNT, uuid4(), user_id, uuid4(), currency
            )
            if account_id is not None:
                return account_id  # type: ignore[no-any-return]
            # A concurrent transaction created it after our snapshot: read it again.

    async def move_balance(
        self, user_id: str, currency: str, delta_minor: int, threshold_minor: int
    ) -> BalanceChange | None:
        """Add `delta_minor` (negative to debit); None if no account or not enough funds."""
        row = await self._db.fetchrow(
            sql.MOVE_BALANCE, user_id, currency, delta_minor, threshold_minor
        )
        if row is None:
            return None
        return _change(row, row["id"], threshold_minor)

    async def debit_many(
        self, debits: Sequence[tuple[str, str, int, int]]
    ) -> list[BalanceChange | None]:
        """(user, currency, amount, threshold) debits applied in order, each seeing the ones
        before it, in one round trip; None where the funds (or the account) were short."""
        rows = await self._db.fetch(
            sql.DEBIT_MANY, *(list(column) for column in zip(*debits, strict=True))
        )
        by_index = {row["n"]: row for row in rows}
        changes: list[BalanceChange | None] = []
        for i, (_, _, _, threshold) in enumerate(debits, start=1):
            row = by_index.get(i)
            changes.append(None if row is None else _change(row, row["account_id"], threshold))
        return changes

    async def balances(self, user_id: str, currency: str | None = None) -> list[tuple[str, int]]:
        rows = await self._db.fetch(sql.BALANCES, user_id, currency)
        return [(row["currency"], row["balance_minor"]) for row in rows]

    async def add_transaction(
        self, row: TransactionRow, trail: list[Transition], meta: str = "{}"
    ) -> None:
        """Insert a transaction together with the audit rows of how it got to its status
        (deferred to `flush_deferred` in a coalesced batch)."""
        if self._deferred is not None:
            self._deferred.append((row, trail, meta))
        else:
            await self._db.execute(
                sql.INSERT_TRANSACTION,
                row.id, row.user_id, row.account_id, row.kind, row.status, row.amount_minor,
                row.currency, row.provider, row.provider_ref, row.description, row.reference,
                row.failure_code, row.failure_message, row.created_at, row.completed_at, meta,
                [step.source for step in trail], [step.target for step in trail],
                [step.reason for step in trail], row.subscription_id, row.invoice_id,
                row.refund_of, _json(row.provider_confirmation),
            )  # fmt: skip
        for step in trail:
            self._observe(row.kind, step)

    async def record(self, transaction: Transaction, meta: str = "{}") -> TransactionRow:
        """Insert a new transaction with its trail (`add_transaction`); its row."""
        row = transaction_row(transaction)
        await self.add_transaction(row, list(transaction.trail), meta)
        return row

    def deferred_count(self) -> int:
        return len(self._deferred or ())

    def forget_deferred(self, keep: int) -> None:
        """Drop the deferred transactions after the first `keep` (a savepoint rolled back)."""
        if self._deferred is not None:
            del self._deferred[keep:]

    async def flush_deferred(self) -> None:
        """Insert every deferred transaction and its audit trail in one statement."""
        if not self._deferred:
            return
        rows = [row for row, _, _ in self._deferred]
        steps = [(row, step) for row, trail, _ in self._deferred for step in trail]
        await self._db.execute(
            sql.INSERT_MANY,
            *([getattr(row, name) for row in rows] for name in sql.MANY_COLUMNS),
            [meta for _, _, meta in self._deferred],
            [_json(row.provider_confirmation) for row in rows],
            [row.id for row, _ in steps],
            [step.source for _, step in steps],
            [step.target for _, step in steps],
            [step.reason for _, step in steps],
            [row.created_at for row, _ in steps],
        )
        self._deferred.clear()

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
        """Apply one checked transition if the row is still in `step.source`; else None."""
        record = await self._db.fetchrow(
            sql.MOVE_TRANSACTION, transaction_id, step.source, step.target,
            failure_code, failure_message, at, step.reason, _json(confirmation),
        )  # fmt: skip
        if record is None:
            return None
        moved = _row(record)
        self._observe(moved.kind, step)
        return moved

    async def refunded_minor(self, payment_id: UUID) -> int:
        """What the completed refunds of a payment add up to."""
        total = await self._db.fetchval(sql.REFUNDED_MINOR, payment_id)
        return int(total)

    async def metadata(self, transaction_id: UUID) -> dict[str, Any]:
        """A transaction's metadata (e.g. the YooKassa receipt it was paid with); {} if none."""
        value = await self._db.fetchval(
            "SELECT metadata FROM transactions WHERE id = $1", transaction_id
        )
        return dict(json.loads(value) if isinstance(value, str) else value or {})

    async def start_payment(
        self, transaction_id: UUID, provider_ref: str | None, account_id: UUID | None, at: datetime
    ) -> TransactionRow | None:
        """Record the provider's reference on a `created` payment; None if it is not one."""
        record = await self._db.fetchrow(
            sql.START_PAYMENT, transaction_id, provider_ref, account_id, at
        )
        return None if record is None else _row(record)

    async def discard_created(self, transaction_id: UUID) -> None:
        await self._db.execute(sql.DISCARD_CREATED, transaction_id)

    async def get(self, transaction_id: UUID, *, lock: bool = False) -> TransactionRow | None:
        record = await self._db.fetchrow(sql.GET + (" FOR UPDATE" if lock else ""), transaction_id)
        return None if record is None else _row(record)

    async def refunds_of(self, payment_id: UUID) -> list[TransactionRow]:
        """Every refund of a payment, oldest first, in any status."""
        return [_row(record) for record in await self._db.fetch(sql.REFUNDS_OF, payment_id)]

    async def set_provider_ref(self, transaction_id: UUID, provider_ref: str) -> None:
        await self._db.execute(sql.SET_PROVIDER_REF, transaction_id, provider_ref)

    async def transaction_by_ref(
        self, provider: str, provider_ref: str, *, lock: bool = False
    ) -> TransactionRow | None:
        record = await self._db.fetchrow(
            sql.BY_REF + (" FOR UPDATE" if lock else ""), provider, provider_ref
        )
        return None if record is None else _row(record)

    async def transactions_page(
        self,
        user_id: str,
        currency: str | None,
        limit: int,
        after: tuple[datetime, UUID] | None,
    ) -> list[TransactionRow]:
        """Newest first; `after` is the (created_at, id) of the last row already seen."""
        after_at, after_id = after if after else (None, None)
        records = await self._db.fetch(sql.PAGE, user_id, currency, after_at, after_id, limit)
        return [_row(record) for record in records]
