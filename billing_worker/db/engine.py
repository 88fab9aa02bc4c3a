"""The database engine: one per process, built by the composition root."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


# Every connection of the worker's: no JIT compilation. Its statements are short index
# lookups; one whose estimated cost passes `jit_above_cost` on a big table (the renewal
# scan on 200,000 subscriptions) spent 72 of its 76 ms compiling, measured.
SERVER_SETTINGS = {"jit": "off"}


def create_engine(url: str, *, pool_size: int) -> AsyncEngine:
    """SQLModel/SQLAlchemy engine; the money path borrows its asyncpg connections."""
    return create_async_engine(
        url,
        connect_args={"server_settings": SERVER_SETTINGS},
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout (a round trip per message): a connection that turns out
        # dead is invalidated below and the message is retried like any failure.
        pool_pre_ping=False,
        pool_recycle=1800,
        pool_timeout=30,
    )


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection as the raw asyncpg driver connection.

    The money path runs hand-written SQL on it: one round trip per statement, no ORM
    bookkeeping (measured: the ORM ran at a third of the benchmark floor's speed).

    A connection goes back to the pool only when it is demonstrably clean. SQLAlchemy's
    rollback-on-return cannot repair it: its adapter never saw the asyncpg transaction
    (`_transaction` is None), so its reset is a no-op. A block that was cancelled (a
    broker channel that closes cancels its handler tasks wherever they are, a health
    check times out) may have interrupted BEGIN, a statement or COMMIT half-way: the
    server may yet run it, and asyncpg may be left with `_top_xact` set, turning every
    later `transaction()` on the connection into a SAVEPOINT of a transaction that never
    commits. Such a connection is terminated, never handed out again.
    """
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
        try:
            yield driver
        except BaseException as interrupted:
            if not reusable(driver, interrupted):
                await discard(connection, driver)
            raise
        if not reusable(driver, None):
            await discard(connection, driver)


def reusable(driver: asyncpg.Connection, interrupted: BaseException | None) -> bool:
    """Whether the connection may serve the next borrower as it is."""
    if driver.is_closed():  # PostgreSQL restarted, the backend was terminated, ...
        return False
    if interrupted is not None and not isinstance(interrupted, asyncpg.PostgresError):
        # Only an error the server reported leaves the protocol in step: a cancellation,
        # a timeout or a client-side failure may have cut an operation short.
        if not isinstance(interrupted, Exception) or isinstance(interrupted, TimeoutError):
            return False
        if isinstance(interrupted, asyncpg.InterfaceError | asyncpg.InternalClientError):
            return False
    # `_top_xact` is asyncpg's own record of the open transaction block: set by a BEGIN
    # that never completed, it outlives the block (see the docstring above).
    return not driver.is_in_transaction() and getattr(driver, "_top_xact", None) is None


async def discard(connection: AsyncConnection, driver: asyncpg.Connection) -> None:
    """Close the socket at once (the server rolls back whatever is open), then drop the
    connection from the pool."""
    if not driver.is_closed():
        left_open = driver.is_in_transaction() or getattr(driver, "_top_xact", None) is not None
        log.log(
            logging.WARNING if left_open else logging.DEBUG,
            "discarding a database connection whose operation was interrupted%s",
            " inside a transaction" if left_open else "",
        )
    driver.terminate()  # synchronous: done even if the invalidation below is cancelled
    await connection.invalidate()
