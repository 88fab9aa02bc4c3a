"""The fake of `db/payment_methods.py`: saved methods in `FakeState.methods`, keyed
(provider, ref) as the SQL's unique constraint is, one live default per user and
provider as its partial unique index has it."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from uuid import UUID, uuid4

from billing_worker.db.payment_methods import Card
from billing_worker.db.payment_methods import MethodRow as Row
from billing_worker.ports import Clock
from support.fake_state import MethodRow, unique_violation
from support.fake_wallet import State


class FakeMethods:
    def __init__(self, state: State, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    def _row(self, provider: str, ref: str, method: MethodRow) -> Row:
        return Row(id=method.id, user_id=method.user_id, provider=provider, ref=ref,
                   card=method.card, is_default=method.is_default,
                   created_at=method.created_at or self._clock(),
                   detached_at=method.detached_at)  # fmt: skip

    async def save(self, user_id: str, provider: str, ref: str, card: Card) -> tuple[Row, bool]:
        self._state().refer_to_user(user_id, "payment_methods")
        methods = self._state().methods
        found = methods.get((provider, ref))
        if found is None:
            methods[provider, ref] = MethodRow(uuid4(), user_id, card, created_at=self._clock())
            return self._row(provider, ref, methods[provider, ref]), True
        if found.user_id == user_id:
            pairs = zip(dataclasses.astuple(card), dataclasses.astuple(found.card), strict=True)
            merged = Card(*(new if new is not None else old for new, old in pairs))
            methods[provider, ref] = found = dataclasses.replace(found, card=merged)
        return self._row(provider, ref, found), False

    def _live(self, user_id: str, provider: str | None) -> list[Row]:
        return [
            self._row(p, ref, m)
            for (p, ref), m in self._state().methods.items()
            if m.user_id == user_id and (provider is None or p == provider) and not m.detached_at
        ]

    async def of_user(self, user_id: str, provider: str | None = None) -> list[Row]:
        return sorted(self._live(user_id, provider), key=lambda row: (row.created_at, row.id))

    async def get(self, user_id: str, provider: str, ref: str, *, lock: bool = False) -> Row | None:
        return next((row for row in self._live(user_id, provider) if row.ref == ref), None)

    async def default_of(self, user_id: str, provider: str) -> Row | None:
        return next((row for row in self._live(user_id, provider) if row.is_default), None)

    def _update(self, method_id: UUID, **changes: object) -> None:
        methods = self._state().methods
        for key, method in methods.items():
            if method.id == method_id:
                methods[key] = dataclasses.replace(method, **changes)  # type: ignore[arg-type]

    async def detach(self, method_id: UUID, at: datetime) -> None:
        self._update(method_id, detached_at=at, is_default=False)

    async def set_default(self, user_id: str, provider: str, method_id: UUID) -> None:
        for row in self._live(user_id, provider):
            if row.is_default and row.id != method_id:
                self._update(row.id, is_default=False)
        self._update(method_id, is_default=True)
        if len([row for row in self._live(user_id, provider) if row.is_default]) > 1:
            raise unique_violation("uq_payment_methods_one_default")  # cannot happen above
