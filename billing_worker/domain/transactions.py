"""The transaction state machine.

created -> processing -> completed | failed | canceled, created -> failed,
completed -> refunded. Any other move is refused with `InvalidState` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.states import StateMachine

MACHINE = StateMachine[Status](
    "transaction",
    {
        Status.CREATED: frozenset({Status.PROCESSING, Status.FAILED}),
        Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED}),
        Status.COMPLETED: frozenset({Status.REFUNDED}),
        Status.FAILED: frozenset(),
        Status.CANCELED: frozenset(),
        Status.REFUNDED: frozenset(),
    },
)
ALLOWED: Mapping[Status, frozenset[Status]] = MACHINE.allowed
TERMINAL = MACHINE.terminal


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded move of a transaction; `source` is None for its creation."""

    source: Status | None
    target: Status
    reason: str | None = None


can_move = MACHINE.can_move


def transition(source: Status, target: Status, reason: str | None = None) -> Transition:
    """Check one move; raise `InvalidState` when the state machine refuses it."""
    return Transition(source, MACHINE.check(source, target), reason)


def path(*statuses: Status, reason: str | None = None) -> list[Transition]:
    """The transitions of a transaction created and moved straight through `statuses`.

    `path(CREATED, PROCESSING, COMPLETED)` is the audit trail of an instant withdrawal.
    """
    first, *rest = statuses
    if first is not Status.CREATED:
        raise InvalidState(f"a transaction starts as created, not {first.value}")
    trail = [Transition(None, first, reason)]
    for source, target in zip(statuses, rest, strict=False):
        trail.append(transition(source, target, reason))
    return trail
