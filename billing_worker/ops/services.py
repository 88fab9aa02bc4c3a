"""The operator commands' connections to RabbitMQ and PostgreSQL.

Opening them here, not in each command, gives every command the same one-line reason
when a service is unreachable, naming where it tried and the setting that says where
(`CommandError`, printed by `billing-worker`'s one error path). Errors after the
connection is open go their own way to `ops.failures.one_line`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import aiormq.exceptions
import asyncpg
from aio_pika.abc import AbstractConnection

from billing_worker.db.engine import create_engine, driver_connection
from billing_worker.messaging.connection import reason_of
from billing_worker.ops.failures import BROKER, DATABASE, CommandError, flat, one_line
from billing_worker.settings import Settings
from billing_worker.startup import causes, describe_broker, describe_database

CONNECT_TIMEOUT = 10.0


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    return flat(reason_of(error))


async def connect_amqp(url: str) -> AbstractConnection:
    """A plain (not robust) connection: an operator command that loses it fails, once."""
    where = describe_broker(url)
    try:
        return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
    except (aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.AuthenticationError) as refused:  # fmt: skip
        raise CommandError(
            f"RabbitMQ at {where} refused the login ({_reason(refused)}): check the user, "
            f"password and vhost in {BROKER}"
        ) from refused
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as error:
        raise CommandError(
            f"cannot reach RabbitMQ at {where} ({BROKER}): {_reason(error)}"
        ) from error


@asynccontextmanager
async def amqp_connection(url: str) -> AsyncIterator[AbstractConnection]:
    """`connect_amqp`, closed afterwards."""
    connection = await connect_amqp(url)
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection of the worker's kind (its server settings), from a pool of
    one that is disposed of afterwards."""
    engine = create_engine(settings.database_dsn, pool_size=1)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                db = await stack.enter_async_context(driver_connection(engine))
        except Exception as error:
            raise database_unreachable(error, settings.database_dsn) from error
        yield db


def database_unreachable(error: BaseException, url: str) -> CommandError:
    """The one-line reason a connection to the database of `url` failed with `error`."""
    where = describe_database(url)
    for cause in causes(error):
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return CommandError(
                f"database {where} does not exist: correct {DATABASE}, or create and migrate "
                "it with `billing-worker migrate`"
            )
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return CommandError(
                f"PostgreSQL at {where} refused the login ({flat(str(cause))}): check the user "
                f"and password in {DATABASE}"
            )
        if isinstance(cause, asyncpg.PostgresError):
            return CommandError(f"PostgreSQL at {where} refused the connection: {_reason(cause)}")
        if isinstance(cause, OSError | TimeoutError):
            return CommandError(
                f"cannot reach PostgreSQL at {where} ({DATABASE}): {_reason(cause)}"
            )
    return CommandError(f"cannot connect to PostgreSQL at {where}: {one_line(error)}")
