"""Holds: reserve money for a saga, then capture (part of) it or release it; the expiry
job releases what nobody captured in time.

A hold only moves `held_minor` on its account (the balance stays); what withdrawals,
charges and other holds may use is `balance - held`, checked in the same conditional
update that reserves (`db/holds_sql.py`). Capture and release lock the hold's row first,
so a capture racing the expiry job (which skips locked holds) or another capture
finds the hold as the winner left it: exactly one of them moves it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from billing_contracts import events as ev
from billing_contracts.holds import (
    CaptureHold,
    CaptureResult,
    HoldEvent,
    HoldOut,
    HoldResult,
    PlaceHold,
    ReleaseHold,
)
from billing_contracts.holds import HoldStatus as Status
from billing_contracts.money import Money
from billing_worker.db.holds import Holding
from billing_worker.domain.errors import NotFound
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.holds import Close, HoldRow, capture_minor, closing
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.money import to_wire
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.wallet import refusal
from billing_worker.ports import UnitOfWork

HOLD_ID_SCOPE = "hold"  # derived_id scope of a hold
CAPTURE_ID_SCOPE = "hold.capture"  # derived_id scope of a capture's withdrawal


async def place_hold(command: PlaceHold, uow: UnitOfWork, deps: Deps) -> HoldResult:
    """Reserve the amount if it is available; else `insufficient_funds`, nothing held."""
    user, currency, amount = command.user_id, command.amount.currency, command.amount.minor
    held = await uow.holds.reserve(user, currency, amount)
    if held is None:
        raise await refusal(uow, user, currency, command.amount.amount)
    now = uow.clock()
    hold = HoldRow(
        id=derived_id(HOLD_ID_SCOPE, user, command.idempotency_key), user_id=user,
        account_id=held.account_id, currency=currency, amount_minor=amount,
        status=Status.OPEN.value, expires_at=now + timedelta(seconds=command.expires_in_seconds),
        created_at=now, reference=command.reference,
    )  # fmt: skip
    await uow.holds.insert(hold, reason="hold")
    uow.emit(hold_event(ev.HOLD_CREATED, hold, held))
    return HoldResult(hold=hold_out(hold), **_amounts(held, currency))


async def capture_hold(command: CaptureHold, uow: UnitOfWork, deps: Deps) -> CaptureResult:
    """A withdrawal of the captured amount (reference: the hold), the rest released, in
    one transaction; `withdrawal.completed` as for any withdrawal, then `hold.captured`."""
    hold = await _own_hold(uow, command.user_id, command.hold_id)
    now = uow.clock()
    closing(hold, Status.CAPTURED, now)
    taken = capture_minor(hold, command.amount)
    threshold = deps.low_balance_minor(hold.currency)
    held = await uow.holds.unreserve(hold.account_id, hold.amount_minor, taken, threshold)
    row = await uow.wallet.record(
        Transaction.withdrawal(
            derived_id(CAPTURE_ID_SCOPE, hold.user_id, command.idempotency_key),
            hold.user_id, hold.account_id, taken, hold.currency, now,
            description=f"capture of hold {hold.id}", reference=str(hold.id),
        )
    )  # fmt: skip
    closed = await _close(uow, hold, Close(Status.CAPTURED, taken, row.id, "captured"), now)
    change = held.change()
    uow.emit(views.withdrawal_completed(row, change))
    if change.crossed_below:
        uow.emit(views.balance_low(hold.user_id, hold.currency, change))
    uow.emit(hold_event(ev.HOLD_CAPTURED, closed, held))
    return CaptureResult(
        hold=hold_out(closed), transaction=views.transaction_out(row),
        **_amounts(held, hold.currency),
    )  # fmt: skip


async def release_hold(command: ReleaseHold, uow: UnitOfWork, deps: Deps) -> HoldResult:
    """Free an open hold (also one past its expiry the job has not reached yet)."""
    hold = await _own_hold(uow, command.user_id, command.hold_id)
    now = uow.clock()
    closing(hold, Status.RELEASED, now)
    held = await uow.holds.unreserve(
        hold.account_id, hold.amount_minor, 0, deps.low_balance_minor(hold.currency)
    )
    closed = await _close(uow, hold, Close(Status.RELEASED, reason="released"), now)
    uow.emit(hold_event(ev.HOLD_RELEASED, closed, held))
    return HoldResult(hold=hold_out(closed), **_amounts(held, hold.currency))


async def expire_due(limit: int, uow: UnitOfWork, deps: Deps) -> int:
    """Release up to `limit` open holds past their expiry (`hold.expired` each); how many.

    Holds a capture or release holds locked are skipped (the next round sees how they
    ended)."""
    now = uow.clock()
    holds = await uow.holds.due(now, limit)
    for hold in holds:
        held = await uow.holds.unreserve(
            hold.account_id, hold.amount_minor, 0, deps.low_balance_minor(hold.currency)
        )
        closed = await _close(uow, hold, Close(Status.EXPIRED, reason="expired"), now)
        uow.emit(hold_event(ev.HOLD_EXPIRED, closed, held))
    return len(holds)


async def _own_hold(uow: UnitOfWork, user_id: str, hold_id: UUID) -> HoldRow:
    """The user's hold, locked; another user's is `not_found`, worded as a missing one."""
    hold = await uow.holds.get(hold_id, lock=True)
    if hold is None or hold.user_id != user_id:
        raise NotFound(f"no hold {hold_id}", hold_id=str(hold_id))
    return hold


async def _close(uow: UnitOfWork, hold: HoldRow, close: Close, now: datetime) -> HoldRow:
    closed = await uow.holds.close(hold.id, close, now)
    if closed is None:  # the row is locked by us and was open: a broken invariant
        raise RuntimeError(f"hold {hold.id} was not open to close")
    return closed


def _amounts(held: Holding, currency: str) -> dict[str, Money]:
    return {
        "balance": to_wire(held.balance_minor, currency),
        "available": to_wire(held.available_minor, currency),
    }


def hold_out(hold: HoldRow) -> HoldOut:
    return HoldOut(
        id=hold.id, user_id=hold.user_id, status=Status(hold.status),
        amount=to_wire(hold.amount_minor, hold.currency),
        captured=to_wire(hold.captured_minor, hold.currency) if hold.captured_minor else None,
        reference=hold.reference, expires_at=hold.expires_at, created_at=hold.created_at,
        closed_at=hold.closed_at,
    )  # fmt: skip


def hold_event(type_: str, hold: HoldRow, held: Holding) -> DomainEvent:
    out = hold_out(hold)
    data = HoldEvent(
        hold_id=hold.id, user_id=hold.user_id, status=out.status, amount=out.amount,
        captured=out.captured, reference=hold.reference, expires_at=hold.expires_at,
        **_amounts(held, hold.currency),
    )  # fmt: skip
    return DomainEvent(type_, data.model_dump(mode="json"))
