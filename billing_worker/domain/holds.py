"""Holds without I/O: the state machine and the rules of a capture.

open -> captured | released | expired; every other move is refused with `InvalidState`.
A hold reserves `amount_minor` of its account (`virtual_accounts.held_minor`) while it
is open; what withdrawals, charges and other holds may use is `balance - held`. A capture
takes at most the hold (a withdrawal of that much) and releases the rest; an expired
hold (past `expires_at`) can no longer be captured, only released by the expiry job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from billing_contracts.holds import HoldStatus as Status
from billing_contracts.money import Money
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput, InvalidState
from billing_worker.domain.money import format_minor
from billing_worker.domain.states import StateMachine

MACHINE = StateMachine[Status](
    "hold",
    {
        Status.OPEN: frozenset({Status.CAPTURED, Status.RELEASED, Status.EXPIRED}),
        Status.CAPTURED: frozenset(),
        Status.RELEASED: frozenset(),
        Status.EXPIRED: frozenset(),
    },
)
ALLOWED: Mapping[Status, frozenset[Status]] = MACHINE.allowed


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A hold as stored (`holds`); money in minor units."""

    id: UUID
    user_id: str
    account_id: UUID
    currency: str
    amount_minor: int
    status: str
    expires_at: datetime
    created_at: datetime
    reference: str | None = None
    captured_minor: int = 0
    capture_transaction_id: UUID | None = None
    closed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """How an open hold ends: its new status, what is captured, why (the audit row)."""

    target: Status
    captured_minor: int = 0
    capture_transaction_id: UUID | None = None
    reason: str | None = None


def closing(hold: HoldRow, target: Status, now: datetime) -> None:
    """Raise `InvalidState` unless `hold` may move to `target` now; an open hold past its
    expiry may only expire (the job's move) or be released."""
    MACHINE.check(Status(hold.status), target)
    if target is Status.CAPTURED and hold.expires_at <= now:
        raise InvalidState(
            f"the hold expired at {hold.expires_at.isoformat()} and cannot be captured",
            status=Status.EXPIRED.value,
            requested=target.value,
            hold_id=str(hold.id),
        )


def capture_minor(hold: HoldRow, amount: Money | None) -> int:
    """What a capture of `amount` (all of the hold when None) takes, in minor units."""
    if amount is None:
        return hold.amount_minor
    if amount.currency != hold.currency:
        raise CurrencyMismatch(
            f"the hold is in {hold.currency}, not {amount.currency}",
            hold_currency=hold.currency,
        )
    if amount.minor > hold.amount_minor:
        held = format_minor(hold.amount_minor, hold.currency)
        raise InvalidInput(
            f"cannot capture {amount.amount} of a hold of {held}",
            hold_amount={"amount": held, "currency": hold.currency},
        )
    return amount.minor
