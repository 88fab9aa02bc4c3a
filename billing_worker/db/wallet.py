"""The wallet's SQL: accounts and transactions, each change in one conditional statement.

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

from billing_worker.domain.transactions import Transition


@dataclass(frozen=True, slots=True)
class BalanceChange:
    account_id: UUID
    balance_minor: int
    crossed_below: bool  # the balance just fell under the low-balance threshold
    threshold_minor: int


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


_OPEN_ACCOUNT = """
WITH new_user AS (
    INSERT INTO billing_users (id, user_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING
), new_account AS (
    INSERT INTO virtual_accounts (id, user_id, currency) VALUES ($3, $2, $4)
    ON CONFLICT (user_id, currency) DO NOTHING RETURNING id
)
SELECT id FROM new_account
UNION ALL
SELECT id FROM virtual_accounts WHERE user_id = $2 AND currency = $4
LIMIT 1
"""

# The flag remembers whether `balance.low` was already sent for this dip below the
# threshold; it is re-armed as soon as the balance is back at or above it.
# The guard reads the balance from the locked row (`previous`, the newest version once
# the lock is ours), not from the UPDATE's own scan: that scan sees the statement's
# snapshot, and a stale balance failing the guard is never re-checked, so a withdrawal
# waiting on a deposit's lock would be refused on the balance from before the deposit.
_MOVE_BALANCE = """
WITH previous AS (
    SELECT id, balance_minor, low_balance_alerted FROM virtual_accounts
    WHERE user_id = $1 AND currency = $2 FOR UPDATE
)
UPDATE virtual_accounts AS a
SET balance_minor = a.balance_minor + $3,
    low_balance_alerted = a.balance_minor + $3 < $4,
    updated_at = now()
FROM previous
WHERE a.id = previous.id AND previous.balance_minor + $3 >= 0
RETURNING a.id, a.balance_minor,
          previous.low_balance_alerted AS was_low, a.low_balance_alerted AS is_low
"""

_INSERT_TRANSACTION = """
WITH created AS (
    INSERT INTO transactions (
        id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref,
        description, reference, failure_code, failure_message, created_at, updated_at,
        completed_at, metadata, subscription_id, invoice_id, refund_of, provider_confirmation
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16::jsonb,
              $20, $21, $22, $23::jsonb)
    RETURNING id
)
INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
SELECT created.id, step.source, step.target, step.reason, $14
FROM created, unnest($17::text[], $18::text[], $19::text[]) AS step(source, target, reason)
"""

_MANY_COLUMNS = (
    "id", "user_id", "account_id", "kind", "status", "amount_minor", "currency", "provider",
    "provider_ref", "description", "reference", "failure_code", "failure_message",
    "created_at", "completed_at", "subscription_id", "invoice_id",
)  # fmt: skip
_INSERT_MANY = """
WITH created AS (
    INSERT INTO transactions (
        id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref,
        description, reference, failure_code, failure_message, created_at, updated_at,
        completed_at, subscription_id, invoice_id, metadata
    )
    SELECT t.id, t.user_id, t.account_id, t.kind, t.status, t.amount_minor, t.currency,
           t.provider, t.provider_ref, t.description, t.reference, t.failure_code,
           t.failure_message, t.created_at, t.created_at, t.completed_at, t.subscription_id,
           t.invoice_id, t.meta::jsonb
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::bigint[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::timestamptz[], $15::timestamptz[], $16::uuid[], $17::uuid[],
                $18::text[])
         AS t(id, user_id, account_id, kind, status, amount_minor, currency, provider,
              provider_ref, description, reference, failure_code, failure_message,
              created_at, completed_at, subscription_id, invoice_id, meta)
    RETURNING id
)
INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
SELECT s.transaction_id, s.source, s.target, s.reason, s.at
FROM unnest($19::uuid[], $20::text[], $21::text[], $22::text[], $23::timestamptz[])
     WITH ORDINALITY AS s(transaction_id, source, target, reason, at, n)
WHERE EXISTS (SELECT 1 FROM created)
ORDER BY s.n
"""

_MOVE_TRANSACTION = """
WITH moved AS (
    UPDATE transactions
    SET status = $3, updated_at = $6,
        completed_at = CASE WHEN $3 IN ('completed', 'refunded') THEN coalesce(completed_at, $6)
                            ELSE completed_at END,
        failure_code = coalesce($4, failure_code),
        failure_message = coalesce($5, failure_message),
        provider_confirmation = coalesce($8::jsonb, provider_confirmation)
    WHERE id = $1 AND status = $2
    RETURNING *
), audit AS (
    INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
    SELECT id, $2, $3, $7, $6 FROM moved
)
SELECT * FROM moved
"""

_SET_PROVIDER_REF = """
UPDATE transactions SET provider_ref = $2 WHERE id = $1
"""

# A payment intent (`created`, no provider reference yet) gets the provider's answer:
# its reference and, for a deposit, the account it will be credited to.
_START_PAYMENT = """
UPDATE transactions
SET provider_ref = $2, account_id = coalesce($3, account_id), updated_at = $4
WHERE id = $1 AND status = 'created' AND provider_ref IS NULL
RETURNING {columns}
"""

# A payment intent the provider refused outright (nothing was created there): gone, with
# its audit trail, as a refused command leaves nothing behind.
_DISCARD_CREATED = """
DELETE FROM transactions WHERE id = $1 AND status = 'created' AND provider_ref IS NULL
"""

_COLUMNS = (
    "id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref, "
    "created_at, completed_at, description, reference, failure_code, failure_message, "
    "subscription_id, invoice_id, refund_of, provider_confirmation"
)


def _row(record: Any) -> TransactionRow:
    values = {name: record[name] for name in TransactionRow.__slots__}
    if isinstance(values["provider_confirmation"], str):  # jsonb arrives as text
        values["provider_confirmation"] = json.loads(values["provider_confirmation"])
    return TransactionRow(**values)


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class SqlWallet:
    """Accounts and transactions of one database transaction."""

    def __init__(
        self,
        connection: asyncpg.Connection,
        on_transition: Callable[[str, Transition], None] | None = None,
        *,
        defer_inserts: bool = False,
    ) -> None:
        self._db = connection
        self._observe = on_transition or (lambda _kind, _step: None)
        # Coalesced commands write their new transactions in one statement at flush.
        self._deferred: list[tuple[TransactionRow, list[Transition], str]] | None = (
            [] if defer_inserts else None
        )

    async def open_account(self, user_id: str, currency: str) -> UUID:
        """The user's account in `currency`, created (with the user) on first use."""
        while True:
            account_id = await self._db.fetchval(_OPEN_ACCOUNT, uuid4(), user_id, uuid4(), currency)
            if account_id is not None:
                return account_id  # type: ignore[no-any-return]
            # A concurrent transaction created it after our snapshot: read it again.

    async def move_balance(
        self, user_id: str, currency: str, delta_minor: int, threshold_minor: int
    ) -> BalanceChange | None:
        """Add `delta_minor` (negative to debit); None if no account or not enough funds."""
        row = await self._db.fetchrow(
            _MOVE_BALANCE, user_id, currency, delta_minor, threshold_minor
        )
        if row is None:
            return None
        return BalanceChange(
            account_id=row["id"],
            balance_minor=row["balance_minor"],
            crossed_below=row["is_low"] and not row["was_low"],
            threshold_minor=threshold_minor,
        )

    async def debit_many(
        self, debits: Sequence[tuple[str, str, int, int]]
    ) -> list[BalanceChange | None]:
        """(user, currency, amount, threshold) debits applied in order, each seeing the ones
        before it, in one round trip; None where the funds (or the account) were short."""
        rows = await self._db.fetch(
            "SELECT * FROM billing_debit_many($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
            *(list(column) for column in zip(*debits, strict=True)),
        )
        by_index = {row["n"]: row for row in rows}
        changes: list[BalanceChange | None] = []
        for i, (_, _, _, threshold) in enumerate(debits, start=1):
            row = by_index.get(i)
            changes.append(
                None
                if row is None
                else BalanceChange(
                    account_id=row["account_id"],
                    balance_minor=row["balance_minor"],
                    crossed_below=row["is_low"] and not row["was_low"],
                    threshold_minor=threshold,
                )
            )
        return changes

    async def balances(self, user_id: str, currency: str | None = None) -> list[tuple[str, int]]:
        rows = await self._db.fetch(
            "SELECT currency, balance_minor FROM virtual_accounts "
            "WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2) ORDER BY currency",
            user_id,
            currency,
        )
        return [(row["currency"], row["balance_minor"]) for row in rows]

    async def add_transaction(
        self, row: TransactionRow, trail: list[Transition], meta: str = "{}"
    ) -> None:
        """Insert a transaction together with the audit rows of how it got to its status."""
        if self._deferred is not None:
            self._deferred.append((row, trail, meta))
            for step in trail:
                self._observe(row.kind, step)
            return
        await self._db.execute(
            _INSERT_TRANSACTION,
            row.id, row.user_id, row.account_id, row.kind, row.status, row.amount_minor,
            row.currency, row.provider, row.provider_ref, row.description, row.reference,
            row.failure_code, row.failure_message, row.created_at, row.completed_at, meta,
            [step.source for step in trail], [step.target for step in trail],
            [step.reason for step in trail], row.subscription_id, row.invoice_id, row.refund_of,
            _json(row.provider_confirmation),
        )  # fmt: skip
        for step in trail:
            self._observe(row.kind, step)

    async def flush_deferred(self) -> None:
        """Insert every deferred transaction and its audit trail in one statement."""
        if not self._deferred:
            return
        rows = [row for row, _, _ in self._deferred]
        steps = [(row, step) for row, trail, _ in self._deferred for step in trail]
        columns = [[getattr(row, name) for row in rows] for name in _MANY_COLUMNS]
        await self._db.execute(
            _INSERT_MANY,
            *columns,
            [meta for _, _, meta in self._deferred],
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
            _MOVE_TRANSACTION, transaction_id, step.source, step.target,
            failure_code, failure_message, at, step.reason, _json(confirmation),
        )  # fmt: skip
        if record is None:
            return None
        moved = _row(record)
        self._observe(moved.kind, step)
        return moved

    async def refunded_minor(self, payment_id: UUID) -> int:
        """What the completed refunds of a payment add up to."""
        total = await self._db.fetchval(
            "SELECT coalesce(sum(amount_minor), 0) FROM transactions "
            "WHERE refund_of = $1 AND status = 'completed'",
            payment_id,
        )
        return int(total)

    async def start_payment(
        self, transaction_id: UUID, provider_ref: str | None, account_id: UUID | None, at: datetime
    ) -> TransactionRow | None:
        """Record the provider's reference on a `created` payment; None if it is not one."""
        record = await self._db.fetchrow(
            _START_PAYMENT.format(columns=_COLUMNS), transaction_id, provider_ref, account_id, at
        )
        return None if record is None else _row(record)

    async def discard_created(self, transaction_id: UUID) -> None:
        await self._db.execute(_DISCARD_CREATED, transaction_id)

    async def get(self, transaction_id: UUID) -> TransactionRow | None:
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM transactions WHERE id = $1",  # noqa: S608
            transaction_id,
        )
        return None if record is None else _row(record)

    async def set_provider_ref(self, transaction_id: UUID, provider_ref: str) -> None:
        await self._db.execute(_SET_PROVIDER_REF, transaction_id, provider_ref)

    async def transaction_by_ref(
        self, provider: str, provider_ref: str, *, lock: bool = False
    ) -> TransactionRow | None:
        sql = f"SELECT {_COLUMNS} FROM transactions WHERE provider = $1 AND provider_ref = $2"  # noqa: S608
        record = await self._db.fetchrow(
            sql + (" FOR UPDATE" if lock else ""), provider, provider_ref
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
        sql = f"""
            SELECT {_COLUMNS} FROM transactions
            WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2)
              AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
            ORDER BY created_at DESC, id DESC LIMIT $5
        """  # noqa: S608 - only constant column names are formatted in
        after_at, after_id = after if after else (None, None)
        records = await self._db.fetch(sql, user_id, currency, after_at, after_id, limit)
        return [_row(record) for record in records]
