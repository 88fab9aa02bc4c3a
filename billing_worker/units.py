"""The transaction scaffold of `BillingService`: every database call it makes runs in
`open_unit`.

A unit is one pooled connection, its unit of work and (unless it only reads) one
database transaction. Its flush writes the outbox rows (and idempotency records) just
before the commit; once committed and its connection back in the pool, a flushed unit
is announced (`on_commit`: the outbox publisher is woken, the metrics counted). A unit
left without a flush (a replayed reply, an intent settled elsewhere) announces nothing.
The database's conflicts come out of a unit as `WriteConflict`s (`db.uow.unit_of_work`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker import tracing
from billing_worker.db.uow import Clock, UnitOfWork, unit_of_work
from billing_worker.domain.errors import BillingError
from billing_worker.replies import Reply, refusal_reply

OnCommit = Callable[[UnitOfWork, int], None]
# (scope, key, request hash, reply) of a command's idempotency record
Record = tuple[str, str, str, Reply]


class Refused(Exception):
    """A command refused: its transaction rolls back, and the refusal alone is recorded
    under the command's (scope, key, request hash) in a second one."""

    def __init__(self, scope: str, key: str, digest: str, refusal: BillingError) -> None:
        super().__init__(refusal.message)
        self.record: Record = (scope, key, digest, refusal_reply(refusal))


@dataclass
class Unit:
    uow: UnitOfWork
    events: int | None = None  # outbox rows written: set by a flush, announced after commit
    refusal: Reply | None = None  # the reply recorded for a `Refused` raised in the unit

    async def flush(self) -> None:
        self.events = await self.uow.flush()

    async def flush_with_record(
        self, scope: str, key: str, request_hash: str, reply: dict[str, Any]
    ) -> None:
        self.events = await self.uow.flush_with_record(scope, key, request_hash, reply)

    async def flush_with_records(self, records: list[Record]) -> None:
        self.events = await self.uow.flush_with_records(records)

    def announce(self) -> None:
        """Announce the commit though nothing was flushed (no outbox rows)."""
        self.events = 0


@asynccontextmanager
async def open_unit(
    engine: AsyncEngine,
    clock: Clock,
    on_commit: OnCommit,
    *,
    transaction: bool = True,
    coalesced: bool = False,
) -> AsyncIterator[Unit]:
    """A unit of work on a pooled connection, in one transaction unless `transaction` is
    False (reads). `coalesced`: a batch of commands' transaction (`UnitOfWork`).

    A `Refused` raised in the block rolls the transaction back; the refusal is then
    recorded in a second transaction on the same connection, and left in `unit.refusal`
    (the exception ends there).
    """
    # The span of the database work (tracing.py; a no-op when off): the outbox rows
    # written in it carry its trace context, so the events continue the caller's trace.
    with tracing.span(
        "db transaction" if transaction else "db read",
        {"db.system": "postgresql", "billing.coalesced": coalesced},
    ) as span:
        async with unit_of_work(engine, clock, coalesced=coalesced) as uow:
            unit, db = Unit(uow), uow.connection
            if not transaction:
                yield unit
            else:
                try:
                    async with db.transaction():
                        yield unit
                except Refused as refusal:
                    unit.events = None  # whatever was flushed is rolled back
                    async with db.transaction():
                        await unit.uow.idempotency.record(*refusal.record)
                    unit.refusal = refusal.record[3]
                    if span is not None:
                        span.set_attribute("billing.refused", True)
        if unit.events is not None:
            if span is not None:
                span.set_attribute("billing.events", unit.events)
            on_commit(unit.uow, unit.events)
