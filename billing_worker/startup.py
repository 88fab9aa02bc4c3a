"""Start-up checks that stop a process with a one-line reason instead of a traceback."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from faststream.rabbit import RabbitBroker
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.db.engine import driver_connection
from billing_worker.db.migrate import DatabaseUnavailable, head_revision
from billing_worker.messaging.connection import (
    BrokersUnreachable,
    FailoverBroker,
    FailoverConnection,
    reason_of,
)
from billing_worker.settings import Settings

CONNECT_TIMEOUT = 10.0
BROKER_SETTING = "BILLING_RABBITMQ_URL"
E = TypeVar("E", bound=BaseException)
RECONNECT_INTERVAL = 1.0  # between attempts after a lost connection (each on the next address)


class StartupError(RuntimeError):
    """A setting is wrong or a service is unreachable; the message is the one-line reason."""


class PortInUse(StartupError):
    """Another process listens on the port a setting names."""


def describe_database(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


def describe_broker(url: str) -> str:
    parsed = urlsplit(url)
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 5672}{parsed.path or '/'}"


ASYNCPG_DRIVER = "postgresql+asyncpg"


def check_database_url(url: str) -> None:
    """BILLING_DATABASE_URL names PostgreSQL through asyncpg, the only driver installed.

    A `postgresql://` URL (what most tools print) is refused, not rewritten: its query
    parameters are libpq's (`sslmode=...`), which asyncpg spells differently (`ssl=...`),
    so a silent rewrite could connect without the TLS the operator asked for. The message
    shows the URL to write instead, password hidden."""
    setting = "setting BILLING_DATABASE_URL"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StartupError(
            f"{setting} is not a database URL: write postgresql+asyncpg://USER:PASSWORD@HOST:5432/NAME"
        ) from None
    if parsed.drivername == ASYNCPG_DRIVER:
        return
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise StartupError(
            f"{setting} names {parsed.get_backend_name()}, not PostgreSQL: write "
            "postgresql+asyncpg://USER:PASSWORD@HOST:5432/NAME"
        )
    fixed = parsed.set(drivername=ASYNCPG_DRIVER)
    if "sslmode" in fixed.query:  # asyncpg takes libpq's values under the name ssl
        fixed = fixed.difference_update_query(["sslmode"]).update_query_dict(
            {"ssl": fixed.query["sslmode"]}
        )
    driver = f"the {parsed.get_driver_name()} driver" if "+" in parsed.drivername else "no driver"
    raise StartupError(
        f"{setting} names {driver} ({parsed.drivername}://), the worker needs asyncpg: write "
        f"{fixed.render_as_string(hide_password=True)} instead"
    )


def describe_missing_database(where: str) -> str:
    return (
        f"database {where} does not exist: correct BILLING_DATABASE_URL, or create and "
        "migrate it with `billing-worker migrate`"
    )


async def check_database(engine: AsyncEngine, settings: Settings) -> None:
    """The database exists and is migrated to this code's schema.

    A missing database is refused, never created: a typo in BILLING_DATABASE_URL must not
    leave an empty database behind (`billing-worker migrate` creates it)."""
    where = describe_database(settings.database_dsn)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT), driver_connection(engine) as db:
            has_table = await db.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
            current = (
                await db.fetchval("SELECT version_num FROM alembic_version") if has_table else None
            )
    except DatabaseUnavailable as down:
        raise StartupError(str(down)) from None
    except (OSError, TimeoutError) as error:
        raise StartupError(
            f"cannot reach PostgreSQL at {where} (BILLING_DATABASE_URL): {error or 'timed out'}"
        ) from None
    except Exception as error:
        if _caused_by(error, asyncpg.InvalidCatalogNameError):
            raise StartupError(describe_missing_database(where)) from None
        if refused := _caused_by(error, asyncpg.PostgresError):
            message = " ".join(str(refused).split())
            raise StartupError(f"PostgreSQL at {where} refused the connection: {message}") from None
        raise
    expected = head_revision()
    if current != expected:
        raise StartupError(
            f"database {where} is at schema revision {current or 'none'}, this worker needs "
            f"{expected}: run `billing-worker migrate` first"
        )


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it wraps: the first error of a group, SQLAlchemy's `orig` (it
    wraps asyncpg's), the explicit cause or the implicit context; each error once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            current = current.exceptions[0]
            continue
        orig = getattr(current, "orig", None)  # sqlalchemy.exc.DBAPIError
        if isinstance(orig, BaseException):
            current = orig
            continue
        current = current.__cause__ or current.__context__


def _caused_by(error: BaseException, kind: type[E]) -> E | None:
    return next((cause for cause in causes(error) if isinstance(cause, kind)), None)


def listen_socket(host: str, port: int, setting: str) -> socket.socket:
    """A listening TCP socket on host:port, or a one-line reason naming `setting`.

    The servers (uvicorn) are handed this socket instead of binding themselves, because
    uvicorn answers a taken port with a log line and `sys.exit(1)` from inside its task;
    binding first also means "listening" is only logged once it is true."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use (another billing-worker?): stop that "
                f"process or set {setting} to a free port"
            ) from None
        if error.errno == errno.EACCES:
            raise StartupError(
                f"not allowed to listen on port {port}: set {setting} to a port above 1023"
            ) from None
        reason = error.strerror or str(error)
        raise StartupError(f"cannot listen on {host}:{port} ({setting}): {reason}") from None
    listener.set_inheritable(True)
    return listener


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
        raise StartupError(
            f"cannot reach RabbitMQ at {where} ({BROKER_SETTING}): timed out"
        ) from None
    except BrokersUnreachable as error:
        reasons = "; ".join(
            f"{describe_broker(url)}: {reason_of(failure)}"
            for url, (_, failure) in zip(urls, error.failures, strict=False)
        )
        raise StartupError(
            f"cannot reach RabbitMQ at any of its addresses: {reasons} (check {BROKER_SETTING})"
        ) from None
    except Exception as error:  # aio-pika raises several unrelated types for one cause
        raise StartupError(
            f"cannot reach RabbitMQ at {where} ({BROKER_SETTING}): {reason_of(error)}"
        ) from None
    if isinstance(broker, FailoverBroker) and not isinstance(connection, FailoverConnection):
        # FastStream no longer hands our connection class to aio-pika: no failover.
        raise StartupError(
            f"this FastStream made a {type(connection).__name__}, not a FailoverConnection"
        )
