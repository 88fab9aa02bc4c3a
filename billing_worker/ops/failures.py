"""One line for any failure of a `billing-worker` command.

`billing_worker.cli.main` runs every subcommand through `one_line`, so that a command
never needs its own try/except to keep a traceback off an operator's screen. Known causes
(a refused start-up, an unreachable or refusing service, a database that is missing or not
migrated, a queue that does not exist) get a sentence that names what to fix: the
setting, or the command to run. Anything else is still one line: its type and first line,
with a pointer to `--traceback`.

Errors often arrive wrapped (SQLAlchemy wraps asyncpg's, asyncio.TaskGroup and FastStream
wrap in exception groups, a `raise ... from` keeps the cause), so the cause is looked for
along the chain, and the outermost error that is understood wins.
"""

from __future__ import annotations

import aiormq.exceptions
import asyncpg

from billing_worker.db.migrate import DatabaseUnavailable
from billing_worker.startup import StartupError
from billing_worker.startup import causes as chain

DATABASE = "BILLING_DATABASE_URL"
BROKER = "BILLING_RABBITMQ_URL"


class CommandError(StartupError):
    """A command refuses to go on; the message is the whole line (names what to fix)."""


def flat(text: str) -> str:
    """`text` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(text.split())


def _postgres(error: asyncpg.PostgresError) -> str:
    message = flat(str(error))
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return (
            f"PostgreSQL says: {message}: correct {DATABASE}, or create and migrate it with "
            "`billing-worker migrate`"
        )
    if isinstance(error, asyncpg.UndefinedTableError):
        return f"the database is not migrated ({message}): run `billing-worker migrate`"
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        return (
            f"PostgreSQL refused the login ({message}): check the user and password in {DATABASE}"
        )
    return f"PostgreSQL refused it: {message}"


def _amqp(error: aiormq.exceptions.AMQPError) -> str:
    reason = flat(str(error)) or type(error).__name__
    if isinstance(
        error, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError
    ):
        return (
            f"RabbitMQ refused the login ({reason}): check the user, password and vhost in {BROKER}"
        )
    if isinstance(error, aiormq.exceptions.ChannelAccessRefused):
        return (
            f"RabbitMQ refused an operation ({reason}): the broker user of {BROKER} lacks "
            "a permission"
        )
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return (
            f"RabbitMQ has no such queue or exchange ({reason}): has a worker (`billing-worker "
            f"run`) declared its topology on the vhost of {BROKER}?"
        )
    if isinstance(error, aiormq.exceptions.AMQPConnectionError):
        return f"lost or could not open the RabbitMQ connection ({reason}): check {BROKER}"
    return f"RabbitMQ refused it: {reason}"


def one_line(error: BaseException) -> str:
    """What to print (after the command's name) for `error`: one line, no traceback."""
    for cause in chain(error):
        if isinstance(cause, StartupError):
            return flat(str(cause))
        if isinstance(cause, DatabaseUnavailable):  # worded by db/migrate.py
            return f"{flat(str(cause))} (check {DATABASE})"
        if isinstance(cause, asyncpg.PostgresError):
            return _postgres(cause)
        if isinstance(cause, aiormq.exceptions.AMQPError):
            return _amqp(cause)
    for cause in chain(error):  # a bare network error, from wherever it came
        if isinstance(cause, TimeoutError):
            return "a service did not answer in time (RabbitMQ or PostgreSQL)"
        if isinstance(cause, ConnectionError | OSError):
            return f"connection failed ({flat(str(cause)) or type(cause).__name__})"
    first = flat(str(error).split("\n", 1)[0]) if str(error) else ""
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"unexpected error: {detail} (run again with --traceback for the details)"
