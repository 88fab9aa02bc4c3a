"""One small state machine, built from a table of allowed moves.

Transactions, invoices and subscriptions each hold one (`domain/transactions.py`,
`domain/invoices.py`, `domain/subscriptions.py`). A refused move raises `InvalidState`
naming the thing, the current status and the requested one, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Generic, TypeVar

from billing_worker.domain.errors import InvalidState

S = TypeVar("S", bound=StrEnum)


class StateMachine(Generic[S]):
    """The moves `allowed[source]` of a thing called `noun` ("transaction", "invoice")."""

    __slots__ = ("allowed", "noun", "terminal")

    def __init__(self, noun: str, allowed: Mapping[S, frozenset[S]]) -> None:
        self.noun = noun
        self.allowed: Mapping[S, frozenset[S]] = MappingProxyType(dict(allowed))
        self.terminal: frozenset[S] = frozenset(s for s, targets in allowed.items() if not targets)

    def can_move(self, source: S, target: S) -> bool:
        return target in self.allowed[source]

    def check(self, source: S, target: S) -> S:
        """Return `target` if `source -> target` is allowed; else raise `InvalidState`."""
        if not self.can_move(source, target):
            raise InvalidState(
                f"a {source.value} {self.noun} cannot become {target.value}",
                status=source.value,
                requested=target.value,
            )
        return target
