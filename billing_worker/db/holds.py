"""The holds' repository: reservations on accounts and the holds themselves, each change
one conditional statement (the statements are in `db/holds_sql.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from billing_worker.db import holds_sql as sql
from billing_worker.domain.holds import Close, HoldRow
from billing_worker.domain.ledger import BalanceChange


@dataclass(frozen=True, slots=True)
class Holding:
    """An account after its holds moved: balance, held, and the low-balance crossing."""

    account_id: UUID
    balance_minor: int
    held_minor: int
    crossed_below: bool = False
    threshold_minor: int = 0

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.held_minor

    def change(self) -> BalanceChange:
        return BalanceChange(
            self.account_id, self.balance_minor, self.crossed_below, self.threshold_minor
        )


def _holding(record: Any, threshold_minor: int = 0) -> Holding:
    return Holding(
        record["id"], record["balance_minor"], record["held_minor"],
        bool(record["is_low"] and not record["was_low"]), threshold_minor,
    )  # fmt: skip


def _hold(record: Any) -> HoldRow:
    return HoldRow(**{name: record[name] for name in HoldRow.__slots__})


class SqlHolds:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def reserve(self, user_id: str, currency: str, amount_minor: int) -> Holding | None:
        """Hold `amount_minor` of what is available; None if short (or no account)."""
        record = await self._db.fetchrow(sql.RESERVE, user_id, currency, amount_minor)
        return None if record is None else _holding(record)

    async def unreserve(
        self, account_id: UUID, held_minor: int, debit_minor: int, threshold_minor: int
    ) -> Holding:
        """An open hold of `held_minor` ends, `debit_minor` of it leaving the balance."""
        record = await self._db.fetchrow(
            sql.UNRESERVE, account_id, held_minor, debit_minor, threshold_minor
        )
        if record is None:  # the hold's amount is in held_minor while it is open
            raise RuntimeError(f"account {account_id} holds less than an open hold of it")
        return _holding(record, threshold_minor)

    async def insert(self, hold: HoldRow, reason: str | None = None) -> None:
        """A new open hold, with the audit row of its creation."""
        await self._db.execute(
            sql.INSERT, hold.id, hold.user_id, hold.account_id, hold.currency,
            hold.amount_minor, hold.reference, hold.expires_at, hold.created_at, reason,
        )  # fmt: skip

    async def get(self, hold_id: UUID, *, lock: bool = False) -> HoldRow | None:
        record = await self._db.fetchrow(sql.GET + (" FOR UPDATE" if lock else ""), hold_id)
        return None if record is None else _hold(record)

    async def close(self, hold_id: UUID, close: Close, at: datetime) -> HoldRow | None:
        """Move an open hold to `close.target` (with its audit row); None if not open."""
        record = await self._db.fetchrow(
            sql.CLOSE, hold_id, close.target.value, close.captured_minor,
            close.capture_transaction_id, at, close.reason,
        )  # fmt: skip
        return None if record is None else _hold(record)

    async def due(self, now: datetime, limit: int) -> list[HoldRow]:
        """Open holds past their expiry, locked (others' locked ones skipped), and their
        accounts locked in one order."""
        records = await self._db.fetch(sql.DUE, now, limit)
        holds = [_hold(record) for record in records]
        if holds:
            await self._db.fetch(sql.LOCK_ACCOUNTS, sorted({h.account_id for h in holds}))
        return holds

    async def balances_many(
        self, wanted: Sequence[tuple[str, str | None]]
    ) -> list[list[tuple[str, int, int]]]:
        """`balances` of many (user, currency or None), in one round trip, in order."""
        found: list[list[tuple[str, int, int]]] = [[] for _ in wanted]
        rows = await self._db.fetch(
            sql.BALANCES_MANY, [user for user, _ in wanted], [currency for _, currency in wanted]
        )
        for row in rows:
            found[row["n"] - 1].append((row["currency"], row["balance_minor"], row["held_minor"]))
        return found

    async def balances(
        self, user_id: str, currency: str | None = None
    ) -> list[tuple[str, int, int]]:
        """(currency, balance, held) of the user's accounts."""
        rows = await self._db.fetch(sql.BALANCES, user_id, currency)
        return [(row["currency"], row["balance_minor"], row["held_minor"]) for row in rows]
