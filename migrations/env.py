"""Alembic environment: async engine (asyncpg), schema from ``SQLModel.metadata``.

The database URL is the ``sqlalchemy.url`` main option, which
:func:`billing_worker.db.migrate.upgrade_to_head` sets programmatically. From the
``alembic`` command line (configured in ``pyproject.toml``) it falls back to
``BILLING_DATABASE_URL``.

This runs its own event loop (``asyncio.run``), so Alembic commands must be invoked
outside a running loop (``billing_worker.db.migrate.migrate`` uses a worker thread).
"""

import asyncio
import logging
import os

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config
from sqlmodel import SQLModel

import billing_worker.db.tables  # noqa: F401  (registers every table on the metadata)

config = context.config
target_metadata = SQLModel.metadata

# Serialises concurrent `migrate` runs (several replicas starting at once): the second
# waits, then finds the schema already at head. Any constant shared by all runs works.
MIGRATION_LOCK_ID = 0x62696C6C  # "bill"

COMPARE_OPTIONS = {
    "compare_type": True,
    # Alembic compares CHECK constraints only with this opt-in plugin (by name).
    "autogenerate_plugins": ["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname"],
}

if config.cmd_opts is not None and not logging.getLogger().handlers:
    # Started from the alembic CLI (no alembic.ini, so no [loggers] section): show
    # the "Running upgrade ..." lines. Programmatic callers keep their own logging.
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")


def database_url() -> str:
    # get_alembic_option, not get_main_option: the latter raises when there is no
    # alembic.ini at all (CLI runs configured only by pyproject.toml).
    url = config.get_alembic_option("sqlalchemy.url") or os.environ.get("BILLING_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or BILLING_DATABASE_URL")
    return url


def run_migrations_offline() -> None:
    """Render the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **COMPARE_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, **COMPARE_OPTIONS)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(
        {"sqlalchemy.url": database_url()},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    try:
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
