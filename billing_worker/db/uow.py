"""The unit of work: one PostgreSQL transaction holding state, idempotency and outbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_contracts import names
from billing_contracts.envelope import EventEnvelope
from billing_worker import tracing
from billing_worker.db import outbox
from billing_worker.db.coupons import SqlCoupons
from billing_worker.db.engine import driver_connection
from billing_worker.db.errors import translated
from billing_worker.db.holds import SqlHolds
from billing_worker.db.idempotency import SqlIdempotency
from billing_worker.db.intents import SqlIntents
from billing_worker.db.invoices import SqlInvoices
from billing_worker.db.payment_methods import SqlMethods
from billing_worker.db.subscriptions import SqlPlans, SqlSubscriptions
from billing_worker.db.taxes import SqlTaxRates
from billing_worker.db.users import SqlUsers
from billing_worker.db.wallet import SqlWallet
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.transactions import Transition
from billing_worker.providers.base import Notification

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def event_message(event: DomainEvent) -> outbox.OutboxMessage:
    """The outbox row of a domain event: the event envelope of `billing_contracts.envelope`."""
    envelope = EventEnvelope[Any](
        event_id=event.event_id,
        type=event.type,
        pattern=event.type,  # where NestJS's @EventPattern looks for the type
        occurred_at=event.occurred_at.astimezone(UTC),
        data=event.data,
    )
    return outbox.OutboxMessage(
        event_id=event.event_id,
        exchange=names.EVENTS_EXCHANGE,
        routing_key=event.type,
        type=event.type,
        body=envelope.model_dump_json(),
        headers=tracing.current_headers(),  # W3C trace context; {} when tracing is off
    )


def notification_message(provider: str, notification: Notification) -> outbox.OutboxMessage:
    """A provider callback the worker delivers to itself (the sandbox's 'webhook')."""
    return outbox.OutboxMessage(
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{provider}:{notification.event_id}"),
        exchange="",
        routing_key=names.PROVIDER_EVENTS_QUEUE,
        type=f"{provider}.callback",
        body=notification.body.decode(),
        headers={
            **tracing.current_headers(),
            **notification.headers,
            names.PROVIDER_HEADER: provider,
        },
    )


class UnitOfWork:
    """What a handler may touch: repositories on one connection, and the outbox.

    The caller opens the database transaction; `flush()` writes the collected events in
    the same transaction, just before commit.

    A `coalesced` unit of work (one transaction for a batch of commands) writes the
    batch's new transactions in one statement at the flush (`SqlWallet.defer_inserts`).
    """

    def __init__(
        self, connection: asyncpg.Connection, clock: Clock = utc_now, *, coalesced: bool = False
    ) -> None:
        self.connection = connection
        self.transitions: list[tuple[str, Transition]] = []  # for metrics, after commit
        self.emitted: list[DomainEvent] = []
        self.wallet = SqlWallet(
            connection,
            lambda kind, step: self.transitions.append((kind, step)),
            defer_inserts=coalesced,
        )
        self.users = SqlUsers(connection)
        self.plans = SqlPlans(connection)
        self.subscriptions = SqlSubscriptions(connection)
        self.invoices = SqlInvoices(connection)
        self.idempotency = SqlIdempotency(connection)
        self.intents = SqlIntents(connection)
        self.holds = SqlHolds(connection)
        self.methods = SqlMethods(connection)
        self.tax_rates = SqlTaxRates(connection)
        self.coupons = SqlCoupons(connection)
        self.clock = clock
        self._outbox: list[outbox.OutboxMessage] = []
        self.flushed: list[outbox.OutboxMessage] = []  # written: published once committed

    def _written(self) -> int:
        """The collected rows are in the statement just sent: remember, clear, count."""
        count = len(self._outbox)
        self.flushed += self._outbox
        self._outbox = []
        return count

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A SAVEPOINT of the open transaction: an exception in the block rolls back its
        statements and forgets what it collected (events, outbox rows, deferred
        transactions, transitions), so one command of a coalesced batch can be refused
        after it wrote, leaving the others' work in place."""
        marks = (len(self.emitted), len(self._outbox), len(self.transitions))
        deferred = self.wallet.deferred_count()
        try:
            async with self.connection.transaction():
                yield
        except BaseException:
            del self.emitted[marks[0] :], self._outbox[marks[1] :], self.transitions[marks[2] :]
            self.wallet.forget_deferred(deferred)
            raise

    def emit(self, event: DomainEvent) -> None:
        self.emitted.append(event)
        self._outbox.append(event_message(event))

    def deliver_later(self, provider: str, notification: Notification) -> None:
        self._outbox.append(notification_message(provider, notification))

    async def flush_with_record(
        self, scope: str, key: str, request_hash: str, reply: dict[str, Any]
    ) -> int:
        """The outbox rows and the command's idempotency record, in one round trip."""
        await self.wallet.flush_deferred()
        reply_json = json.dumps(reply, separators=(",", ":"))
        await outbox.insert_with_record(
            self.connection, self._outbox, (scope, key, request_hash, reply_json)
        )
        return self._written()

    async def flush_with_records(self, records: list[tuple[str, str, str, dict[str, Any]]]) -> int:
        """Deferred transactions, then the outbox rows and every command's record."""
        await self.wallet.flush_deferred()
        await outbox.insert_with_records(
            self.connection,
            self._outbox,
            [(s, k, h, json.dumps(r, separators=(",", ":"))) for s, k, h, r in records],
        )
        return self._written()

    async def flush(self) -> int:
        await self.wallet.flush_deferred()
        await outbox.insert(self.connection, self._outbox)
        return self._written()


@asynccontextmanager
async def unit_of_work(
    engine: AsyncEngine, clock: Clock = utc_now, *, coalesced: bool = False
) -> AsyncIterator[UnitOfWork]:
    """A unit of work on a pooled connection (the caller opens its transaction on
    `connection`). The conflicts asyncpg reports in the block, its COMMIT included, come
    out as `WriteConflict`s (`db/errors.py`); the connection goes back to the pool (or
    not) just as with asyncpg's own error (`engine.reusable`)."""
    with translated():
        async with driver_connection(engine) as db:
            yield UnitOfWork(db, clock, coalesced=coalesced)
