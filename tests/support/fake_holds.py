"""The fake holds: `billing_worker.ports.Holds` on `FakeState`, guard for guard what the
SQL of `billing_worker/db/holds_sql.py` does (tests/contract/test_holds_contract.py runs
both on the same cases)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from uuid import UUID

from billing_worker.db.holds import Holding
from billing_worker.db.tables_holds import HOLD_STATUSES
from billing_worker.domain.holds import Close, HoldRow
from support.fake_state import check_violation, unique_violation
from support.fake_wallet import State


class FakeHolds:
    def __init__(self, state: State) -> None:
        self._state = state

    async def reserve(self, user_id: str, currency: str, amount_minor: int) -> Holding | None:
        account = self._state().accounts.get((user_id, currency))
        if account is None or account.balance_minor - account.held_minor < amount_minor:
            return None
        account.held_minor += amount_minor
        return Holding(account.id, account.balance_minor, account.held_minor)

    async def unreserve(
        self, account_id: UUID, held_minor: int, debit_minor: int, threshold_minor: int
    ) -> Holding:
        account = next(a for a in self._state().accounts.values() if a.id == account_id)
        if account.held_minor < held_minor:
            raise RuntimeError(f"account {account_id} holds less than an open hold of it")
        was_low = account.low_alerted
        account.held_minor -= held_minor
        account.balance_minor -= debit_minor
        check_violation("virtual_accounts", "balance_non_negative", account.balance_minor >= 0)
        check_violation(
            "virtual_accounts", "held_within_balance",
            account.balance_minor - account.held_minor >= 0,
        )  # fmt: skip
        if debit_minor > 0:
            account.low_alerted = account.balance_minor < threshold_minor
        crossed = account.low_alerted and not was_low
        return Holding(
            account.id, account.balance_minor, account.held_minor, crossed, threshold_minor
        )

    async def insert(self, hold: HoldRow, reason: str | None = None) -> None:
        state = self._state()
        state.refer_to_user(hold.user_id, "holds")
        check_violation("holds", "amount_positive", hold.amount_minor > 0)
        if hold.id in state.holds:
            raise unique_violation("pk_holds")
        state.holds[hold.id] = dataclasses.replace(hold, status="open")
        state.hold_trails[hold.id] = [(None, "open", reason)]

    async def get(self, hold_id: UUID, *, lock: bool = False) -> HoldRow | None:
        return self._state().holds.get(hold_id)

    async def close(self, hold_id: UUID, close: Close, at: datetime) -> HoldRow | None:
        state = self._state()
        hold = state.holds.get(hold_id)
        if hold is None or hold.status != "open":
            return None
        check_violation("holds", "status", close.target.value in HOLD_STATUSES)
        check_violation("holds", "captured_within_hold", close.captured_minor <= hold.amount_minor)
        captured = close.captured_minor > 0 and close.capture_transaction_id is not None
        check_violation("holds", "captured", (close.target.value == "captured") == captured)
        closed = dataclasses.replace(
            hold, status=close.target.value, captured_minor=close.captured_minor,
            capture_transaction_id=close.capture_transaction_id, closed_at=at,
        )  # fmt: skip
        state.holds[hold_id] = closed
        state.hold_trails[hold_id].append(("open", close.target.value, close.reason))
        return closed

    async def due(self, now: datetime, limit: int) -> list[HoldRow]:
        due = [
            h for h in self._state().holds.values() if h.status == "open" and h.expires_at <= now
        ]
        return sorted(due, key=lambda h: h.expires_at)[:limit]

    async def balances(
        self, user_id: str, currency: str | None = None
    ) -> list[tuple[str, int, int]]:
        return sorted(
            (cur, account.balance_minor, account.held_minor)
            for (user, cur), account in self._state().accounts.items()
            if user == user_id and currency in (None, cur)
        )
