"""Start-up checks that stop a process with a one-line reason instead of a traceback."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from faststream.rabbit import RabbitBroker
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.migrate import DatabaseUnavailable, ensure_database, head_revision
from billing_worker.messaging.connection import (
    BrokersUnreachable,
    FailoverBroker,
    FailoverConnection,
    reason_of,
)
from billing_worker.settings import Settings

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0  # between attempts after a lost connection (each on the next address)


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


def cluster_broker(settings: Settings, **options: Any) -> FailoverBroker:
    """The worker's and the relay's broker: every address of BILLING_RABBITMQ_URL, tried
    in order at start-up and failed over to when a connection is lost."""
    return FailoverBroker(
        settings.amqp_urls,
        timeout=CONNECT_TIMEOUT,  # per attempt, so a silent node cannot hold up failover
        reconnect_interval=RECONNECT_INTERVAL,
        **options,
    )


async def connect_broker(broker: RabbitBroker, settings: Settings) -> None:
    urls = settings.amqp_urls
    where = ", ".join(describe_broker(url) for url in urls)
    try:
        # Every address gets its attempt (and the pauses between them) before giving up.
        async with asyncio.timeout((CONNECT_TIMEOUT + RECONNECT_INTERVAL) * len(urls)):
            connection = await broker.connect()
    except TimeoutError:
        raise StartupError(f"cannot reach RabbitMQ at {where}: timed out") from None
    except BrokersUnreachable as error:
        reasons = "; ".join(
            f"{describe_broker(url)}: {reason_of(failure)}"
            for url, (_, failure) in zip(urls, error.failures, strict=False)
        )
        raise StartupError(f"cannot reach RabbitMQ at any of its addresses: {reasons}") from None
    except Exception as error:  # aio-pika raises several unrelated types for one cause
        raise StartupError(f"cannot reach RabbitMQ at {where}: {reason_of(error)}") from None
    if isinstance(broker, FailoverBroker) and not isinstance(connection, FailoverConnection):
        # FastStream no longer hands our connection class to aio-pika: no failover.
        raise StartupError(
            f"this FastStream made a {type(connection).__name__}, not a FailoverConnection"
        )
