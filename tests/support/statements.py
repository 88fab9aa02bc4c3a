"""What the worker sends PostgreSQL: asyncpg's query logger on every connection an
engine's pool hands out while a block runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from asyncpg import introspection
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

# What asyncpg itself sends the first time a connection meets a type (its introspection).
_DRIVER = {introspection.INTRO_LOOKUP_TYPES, introspection.INTRO_LOOKUP_TYPES_13,
           introspection.TYPE_BY_NAME}  # fmt: skip


def drivers_own(query: str) -> bool:
    """A statement asyncpg or the engine sends on its own, not the worker's."""
    return query in _DRIVER or "set_config('jit'" in query


def query_text(record: Any) -> str | None:
    """The statement's text, unless it is the driver's own."""
    return None if drivers_own(record.query) else record.query


@asynccontextmanager
async def statements(
    engine: AsyncEngine | Sequence[AsyncEngine | None],
    pick: Callable[[Any], T | None] = query_text,  # type: ignore[assignment]
) -> AsyncIterator[list[T]]:
    """What `pick` keeps of every statement the engine's (or engines') connections send
    while the block runs (it gets asyncpg's `LoggedQuery`: `query`, `args`, ...; None
    drops it); by default the text of each statement but asyncpg's own introspection.
    A worker's engines: `worker.engine` and, for the coalescers' batches,
    `worker.service.batch_engine`."""
    engines = [engine] if isinstance(engine, AsyncEngine) else [e for e in engine if e]
    sent: list[T] = []

    def log(record: Any) -> None:
        kept = pick(record)
        if kept is not None:
            sent.append(kept)

    def checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.driver_connection.add_query_logger(log)

    def checkin(dbapi: Any, _record: Any) -> None:
        if dbapi is not None:
            dbapi.driver_connection.remove_query_logger(log)

    pools = [e.sync_engine for e in engines]
    for pool in pools:
        event.listen(pool, "checkout", checkout)
        event.listen(pool, "checkin", checkin)
    try:
        yield sent
        await asyncio.sleep(0.05)  # the logger is called soon after each statement
    finally:
        for pool in pools:
            event.remove(pool, "checkout", checkout)
            event.remove(pool, "checkin", checkin)
