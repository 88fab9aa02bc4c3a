"""Create the database if it is missing and bring its schema to the Alembic head.

``migrate(url)`` is what ``billing-worker migrate`` runs. The pieces are public for
tests and for a ``migrate --check``: ``current_revision(url)`` vs ``head_revision()``.

Alembic's ``env.py`` starts its own event loop (``asyncio.run``), so
``upgrade_to_head`` must be called from synchronous code with no running loop;
async callers use ``migrate``, which runs it in a worker thread.
"""

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
MAINTENANCE_DATABASE = "postgres"
MIGRATIONS_DIR_ENV = "BILLING_MIGRATIONS_DIR"

# Alembic's `context`/`op` proxies are process-global: two upgrades in one process at
# once would run each other's DDL. Across processes env.py serialises with a PostgreSQL
# advisory lock.
_UPGRADE_LOCK = threading.Lock()


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or refused us; the message is one line."""


def _one_line(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"timed out after {CONNECT_TIMEOUT_SECONDS:g}s"
    return " ".join(str(error).split()) or type(error).__name__


def _server(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def _quote_identifier(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def _connect(url: URL, database: str) -> asyncpg.Connection:
    """An asyncpg connection to ``database`` on the server of ``url``.

    A missing database raises ``asyncpg.InvalidCatalogNameError``; anything else that
    prevents the connection raises :class:`DatabaseUnavailable`.
    """
    ssl: Any = url.query.get("ssl")  # as the SQLAlchemy asyncpg dialect reads it
    try:
        return await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=database,
            timeout=CONNECT_TIMEOUT_SECONDS,
            ssl=ssl,
        )
    except asyncpg.InvalidCatalogNameError:
        raise
    except (OSError, TimeoutError) as error:
        message = f"cannot reach PostgreSQL at {_server(url)}: {_one_line(error)}"
        raise DatabaseUnavailable(message) from error
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        message = f"PostgreSQL at {_server(url)} refused the connection: {_one_line(error)}"
        raise DatabaseUnavailable(message) from error


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` unless it exists; True if it was created.

    Tries the database itself first, so a role that may not open the ``postgres``
    maintenance database still works when there is nothing to create.
    """
    target = make_url(url)
    name = target.database
    if not name:
        raise ValueError("the database URL names no database")
    try:
        connection = await _connect(target, name)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return False

    connection = await _connect(target, MAINTENANCE_DATABASE)
    try:
        log.info("creating database %s", name)
        await connection.execute(f"CREATE DATABASE {_quote_identifier(name)}")
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Another process created it between our two connections.
        return False
    finally:
        await connection.close()
    return True


def migrations_dir() -> Path:
    """The Alembic script directory.

    ``$BILLING_MIGRATIONS_DIR`` if set; else the copy an installed wheel carries in the
    package (``billing_worker/migrations``, put there from the repository's
    ``migrations/`` at build time by pyproject's ``force-include``, so there is one
    source); else, in a checkout (an editable install), the repository's ``migrations/``.
    """
    if override := os.environ.get(MIGRATIONS_DIR_ENV):
        return Path(override)
    package = Path(__file__).resolve().parents[1]
    if (package / "migrations" / "env.py").is_file():
        return package / "migrations"
    return package.parent / "migrations"


def alembic_config(url: str) -> Config:
    """A programmatic Alembic config (no alembic.ini, no logging setup)."""
    config = Config()
    # ConfigParser interpolates '%': escape it (percent-encoded passwords, odd paths).
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision in the migration scripts (None if there are none)."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def _read_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(url: str) -> str | None:
    """The revision the database is at (None for an empty database)."""
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS}
    )
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_read_revision)
    except (OSError, TimeoutError, sa_exc.DBAPIError) as error:
        server = _server(make_url(url))
        raise DatabaseUnavailable(
            f"cannot read the schema revision at {server}: {_one_line(error)}"
        ) from error
    finally:
        await engine.dispose()


def upgrade_to_head(url: str) -> None:
    """Apply every pending migration. Synchronous: call it with no running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "upgrade_to_head() runs its own event loop; from async code use migrate()"
        )
    with _UPGRADE_LOCK:
        command.upgrade(alembic_config(url), "head")


async def migrate(url: str) -> None:
    """Create the database if needed, then upgrade it to the head revision."""
    created = await ensure_database(url)
    current = None if created else await current_revision(url)
    head = head_revision()
    name = make_url(url).database
    if current == head:
        log.info("database %s is up to date at revision %s", name, current)
        return
    log.info("applying migrations: %s -> %s", current or "(empty)", head)
    await asyncio.to_thread(upgrade_to_head, url)
    log.info("database %s is at revision %s", name, head)
