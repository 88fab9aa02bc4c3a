"""Start-up checks that stop a process with a one-line reason instead of a traceback."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from faststream.rabbit import RabbitBroker
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.migrate import DatabaseUnavailable, ensure_database, head_revision
from billing_worker.settings import Settings

CONNECT_TIMEOUT = 10.0


class StartupError(RuntimeError):
    """A setting is wrong or a service is unreachable; the message is the one-line reason."""


def describe_database(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


def describe_broker(url: str) -> str:
    parsed = urlsplit(url)
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 5672}{parsed.path or '/'}"


async def check_database(engine: AsyncEngine, settings: Settings) -> None:
    """The database exists (created if missing) and is migrated to this code's schema."""
    where = describe_database(settings.database_dsn)
    try:
        await ensure_database(settings.database_dsn)
        async with asyncio.timeout(CONNECT_TIMEOUT), driver_connection(engine) as db:
            has_table = await db.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
            current = (
                await db.fetchval("SELECT version_num FROM alembic_version") if has_table else None
            )
    except DatabaseUnavailable as down:
        raise StartupError(str(down)) from None
    except (OSError, TimeoutError) as error:
        raise StartupError(f"cannot reach PostgreSQL at {where}: {error or 'timed out'}") from None
    expected = head_revision()
    if current != expected:
        raise StartupError(
            f"database {where} is at schema revision {current or 'none'}, this worker needs "
            f"{expected}: run `billing-worker migrate` first"
        )


async def connect_broker(broker: RabbitBroker, settings: Settings) -> None:
    where = describe_broker(settings.amqp_url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await broker.connect()
    except TimeoutError:
        raise StartupError(f"cannot reach RabbitMQ at {where}: timed out") from None
    except Exception as error:  # aio-pika raises several unrelated types for one cause
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StartupError(f"cannot reach RabbitMQ at {where}: {reason}") from None
