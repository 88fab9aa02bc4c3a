"""Per-run PostgreSQL database and RabbitMQ vhost, so test runs never see each other."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import make_url

from support import broker_admin

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:8]}"


def database_url_for(base: str, name: str) -> str:
    return make_url(base).set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def maintenance_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the `postgres` database of the server of `url` (to create, drop
    or look up the database `url` names)."""
    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database="postgres",
    )  # fmt: skip
    try:
        yield connection
    finally:
        await connection.close()


async def drop_database(url: str) -> None:
    async with maintenance_connection(url) as connection:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


async def create_empty_database(url: str) -> None:
    async with maintenance_connection(url) as connection:
        await connection.execute(f'CREATE DATABASE "{make_url(url).database}"')


async def database_exists(url: str) -> bool:
    async with maintenance_connection(url) as connection:
        found = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", make_url(url).database
        )
    return found is not None


async def copy_database(template_url: str, name: str) -> str:
    """CREATE DATABASE name TEMPLATE <template>: a migrated copy in a fraction of a second."""
    async with maintenance_connection(template_url) as connection:
        template = make_url(template_url).database
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return database_url_for(template_url, name)


def create_vhost(base: str, name: str) -> str | None:
    """A fresh vhost (`broker_admin`); None when this machine cannot manage the broker."""
    if not broker_admin.local(base) or not broker_admin.available():
        return None
    user = urlsplit(base).username or "guest"
    broker_admin.add_vhost(name)
    broker_admin.set_permissions(name, user, ".*", ".*", ".*")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), "", ""))


def delete_vhost(name: str) -> None:
    broker_admin.delete_vhost(name)
