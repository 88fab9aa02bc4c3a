"""An in-memory unit of work (`billing_worker.ports.UnitOfWork`) for handler unit tests.

    db = FakeDatabase(clock)
    async with db.transaction() as uow:     # rolled back if the block raises
        await handlers.wallet.withdraw(command, uow, deps)
    db.events                               # what committed transactions emitted, in order

`transaction()` works as the service's database transaction does: a refusal raised by a
handler takes back everything the handler wrote (a refused command leaves nothing), and
only a committed transaction's events reach `events` (the outbox). The repositories do
what their SQL does, checked against PostgreSQL by tests/contract/.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from billing_worker.db.idempotency import StoredReply
from billing_worker.db.intents import Intent
from billing_worker.db.tables_core import INTENT_KINDS
from billing_worker.domain.events import DomainEvent
from billing_worker.ports import Clock
from billing_worker.providers.base import Notification
from support.fake_billing import FakeInvoices, FakePlans, FakeSubscriptions
from support.fake_coupons import FakeCoupons
from support.fake_holds import FakeHolds
from support.fake_methods import FakeMethods
from support.fake_state import CUSTOMER_PROVIDERS, FakeState, check_violation, unique_violation
from support.fake_taxes import FakeTaxRates
from support.fake_wallet import FakeUsers, FakeWallet, State


class FakeIdempotency:
    def __init__(self, state: State) -> None:
        self._state = state

    async def find(self, scope: str, key: str) -> StoredReply | None:
        return self._state().records.get((scope, key))

    async def record(self, scope: str, key: str, request_hash: str, reply: dict[str, Any]) -> None:
        records = self._state().records
        if (scope, key) in records:
            raise unique_violation("idempotency_records_pkey")
        records[scope, key] = StoredReply(request_hash, copy.deepcopy(reply))

    async def claim(self, scope: str, key: str) -> bool:
        records = self._state().records
        if (scope, key) in records:
            return False
        records[scope, key] = StoredReply("", None)
        return True


class FakeIntents:
    def __init__(self, state: State, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    async def insert(self, intent: Intent) -> None:
        state = self._state()
        state.refer_to_user(intent.user_id, "provider_intents")
        check_violation("provider_intents", "kind", intent.kind in INTENT_KINDS)
        taken = any(
            (i.scope, i.idempotency_key) == (intent.scope, intent.idempotency_key)
            for i in state.intents.values()
            if i.scope is not None and i.idempotency_key is not None
        )
        if intent.id in state.intents or taken:
            raise unique_violation("provider_intents_pkey")
        stored = Intent(**{**_fields(intent), "customer_ref": None, "created_at": self._clock()})
        state.intents[intent.id] = stored

    async def take(self, intent_id: UUID) -> bool:
        """Delete the intent to settle it, as the SQL's DELETE ... RETURNING."""
        return self._state().intents.pop(intent_id, None) is not None

    async def of_subscription(self, subscription_id: UUID) -> list[Intent]:
        state = self._state()
        return [
            self._with_customer(i)
            for i in state.intents.values()
            if i.subscription_id == subscription_id
        ]

    def _with_customer(self, intent: Intent) -> Intent:
        """The customer is not stored with the intent: read from the user, as the SQL does."""
        user = self._state().users.get(intent.user_id)
        known = user is not None and intent.provider in CUSTOMER_PROVIDERS
        customer = user.customers.get(intent.provider) if known and user else None
        return Intent(**{**_fields(intent), "customer_ref": customer})


def _fields(intent: Intent) -> dict[str, Any]:
    return {name: getattr(intent, name) for name in Intent.__slots__}


class FakeUnitOfWork:
    """One transaction's repositories, clock and outbox."""

    def __init__(self, state: State, clock: Clock) -> None:
        self.wallet = FakeWallet(state)
        self.users = FakeUsers(state)
        self.plans = FakePlans(state)
        self.subscriptions = FakeSubscriptions(state)
        self.invoices = FakeInvoices(state)
        self.idempotency = FakeIdempotency(state)
        self.intents = FakeIntents(state, clock)
        self.holds = FakeHolds(state)
        self.methods = FakeMethods(state, clock)
        self.tax_rates = FakeTaxRates(state)
        self.coupons = FakeCoupons(state)
        self.clock = clock
        self.emitted: list[DomainEvent] = []
        self.deliveries: list[tuple[str, Notification]] = []

    def emit(self, event: DomainEvent) -> None:
        self.emitted.append(event)

    def deliver_later(self, provider: str, notification: Notification) -> None:
        self.deliveries.append((provider, notification))


def fixed_clock() -> datetime:
    return datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeDatabase:
    """The state committed transactions left, and the outbox they wrote."""

    def __init__(self, clock: Clock = fixed_clock) -> None:
        self.state = FakeState()
        self.clock = clock
        self.events: list[DomainEvent] = []
        self.deliveries: list[tuple[str, Notification]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        saved = self.state.snapshot()
        self.state.transaction_seq += 1
        seq = self.state.transaction_seq
        uow = FakeUnitOfWork(lambda: self.state, self.clock)
        try:
            yield uow
        except BaseException:
            self.state.restore(saved)
            self.state.transaction_seq = seq  # now() moves on, rolled back or not
            raise
        self.events.extend(uow.emitted)
        self.deliveries.extend(uow.deliveries)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: what it wrote goes if it raises, the rest stays."""
        saved = self.state.snapshot()
        try:
            yield
        except BaseException:
            seq = self.state.transaction_seq
            self.state.restore(saved)
            self.state.transaction_seq = seq
            raise

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [event.data for event in self.events if event.type == type_]
