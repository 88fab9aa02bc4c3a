"""Fresh, isolated services for one run: a migrated database and a RabbitMQ vhost.

Every run gets its own database (`billing-worker migrate`, the real schema; or, with
`--scale`, a copy of a seeded template: `CREATE DATABASE <run> TEMPLATE <template>`,
see benchmarks/scale.py) and its own vhost, so no queue, row or sequence leaks from one
run into the next. Vhosts are made through RabbitMQ's management API when it answers on
port 15672 of the broker's host (milliseconds a call), else with `rabbitmqctl` (each
call boots an Erlang VM: about a second of CPU, taken from the machine being measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import httpx

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
MAINTENANCE_DATABASE = "postgres"  # where CREATE DATABASE ... TEMPLATE is issued
TEMPLATE_BUSY_SECONDS = 30.0  # how long a copy waits for the template's last session
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


class ServiceError(RuntimeError):
    """A service is unreachable or cannot be administered; the message says which."""


def asyncpg_dsn(url: str) -> str:
    """Accept SQLAlchemy URLs (`postgresql+asyncpg://`) as well as plain libpq DSNs."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(asyncpg_dsn(dsn))
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def with_vhost(amqp: str, vhost: str) -> str:
    parts = urlsplit(amqp)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


def worker_command() -> list[str]:
    """`billing-worker` of this interpreter's environment (the console script)."""
    script = Path(sys.executable).with_name("billing-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "billing_worker"]


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any BILLING_* setting, plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return {**kept, **extra}


@dataclass(frozen=True, slots=True)
class RunEnv:
    name: str
    dsn: str  # asyncpg DSN of the run's database
    amqp: str  # AMQP URL of the run's vhost
    vhost: str

    @property
    def database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/")

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _run(*command: str, env: dict[str, str] | None = None, limit: float = 120) -> None:
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ServiceError(f"{command[0]} {command[1]} timed out after {limit}s") from None
    if process.returncode != 0:
        text = output.decode(errors="replace").strip().splitlines()
        reason = text[-1] if text else f"exit code {process.returncode}"
        raise ServiceError(f"{' '.join(command[:3])} failed: {reason}")


async def _rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise ServiceError("rabbitmqctl is not on PATH: cannot create a fresh vhost")
    await _run("rabbitmqctl", "-q", *args, limit=60)


def run_env(base_dsn: str, base_amqp: str, name: str) -> RunEnv:
    """The URLs of run `name`: database `name`, vhost `name` with dashes."""
    vhost = name.replace("_", "-")
    return RunEnv(name, with_database(base_dsn, name), with_vhost(base_amqp, vhost), vhost)


async def migrate(env: RunEnv) -> None:
    """Create the run's database and bring it to the real schema: `billing-worker migrate`."""
    environ = clean_environ(BILLING_DATABASE_URL=env.sqlalchemy_url, BILLING_LOG_LEVEL="WARNING")
    await _run(*worker_command(), "migrate", env=environ)


async def copy_template(env: RunEnv, template: str, *, strategy: str = "FILE_COPY") -> None:
    """Create the run's database as a copy of `template` (schema and rows), instead of
    `migrate`. PostgreSQL refuses while anyone is connected to the template: retried
    for up to TEMPLATE_BUSY_SECONDS, then a ServiceError.

    FILE_COPY copies the files (after a checkpoint); WAL_LOG, PostgreSQL 15's default,
    writes every block through the WAL: 147 s against 89 s for the 13.7 GiB template of
    `--scale` on this machine."""
    if strategy not in ("FILE_COPY", "WAL_LOG"):
        raise ValueError(f"unknown CREATE DATABASE strategy {strategy!r}")
    admin = await asyncpg.connect(with_database(env.dsn, MAINTENANCE_DATABASE))
    quoted = '"' + env.database.replace('"', '""') + '"'
    source = '"' + template.replace('"', '""') + '"'
    try:
        deadline = asyncio.get_running_loop().time() + TEMPLATE_BUSY_SECONDS
        while True:
            try:
                await admin.execute(
                    f"CREATE DATABASE {quoted} TEMPLATE {source} STRATEGY {strategy}"
                )
                return
            except asyncpg.ObjectInUseError as busy:
                if asyncio.get_running_loop().time() > deadline:
                    raise ServiceError(f"cannot copy template {template}: {busy}") from None
                await asyncio.sleep(0.5)
            except asyncpg.InvalidCatalogNameError:
                raise ServiceError(f"no template database {template}") from None
    finally:
        await admin.close()


async def _management(base_amqp: str, method: str, path: str, body: Any = None) -> bool:
    """A call to the management API; False when the API does not answer (no plugin)."""
    parts = urlsplit(base_amqp)
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    try:
        async with httpx.AsyncClient(timeout=60, auth=auth) as client:
            response = await client.request(
                method, f"http://{parts.hostname or '127.0.0.1'}:15672/api{path}", json=body
            )
    except httpx.TransportError:
        return False
    if not response.is_success and response.status_code != 404:
        raise ServiceError(f"RabbitMQ management API {method} {path}: {response.status_code}")
    return True


async def add_vhost(env: RunEnv, base_amqp: str) -> None:
    user = urlsplit(base_amqp).username or "guest"
    vhost = quote(env.vhost, safe="")
    if await _management(base_amqp, "PUT", f"/vhosts/{vhost}"):
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        await _management(base_amqp, "PUT", f"/permissions/{vhost}/{quote(user)}", everything)
        return
    await _rabbitmqctl("add_vhost", env.vhost)
    await _rabbitmqctl("set_permissions", "-p", env.vhost, user, ".*", ".*", ".*")


async def create(
    env: RunEnv, base_amqp: str, *, template: str | None = None, schema: str | None = None
) -> None:
    """Database and vhost of a run; both at once (set-up, never while measuring). The
    database is copied from `template` (a scaled one) when given, else from `schema`
    (migrated and empty: a copy takes a quarter of a second, `billing-worker migrate`
    about two), else migrated."""
    if template is not None:
        database = copy_template(env, template)
    elif schema is not None:
        database = copy_template(env, schema, strategy="WAL_LOG")  # small: no checkpoint
    else:
        database = migrate(env)
    await asyncio.gather(database, add_vhost(env, base_amqp))


async def drop_database(env: RunEnv, base_dsn: str) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(base_dsn))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{env.database}" WITH (FORCE)')
    finally:
        await admin.close()


async def destroy(env: RunEnv, base_dsn: str, base_amqp: str) -> None:
    """Drop the run's database and vhost; safe to call after a partial `create`."""
    await drop_database(env, base_dsn)
    if await _management(base_amqp, "DELETE", f"/vhosts/{quote(env.vhost, safe='')}"):
        return
    with contextlib.suppress(ServiceError):  # it was never created
        await _rabbitmqctl("delete_vhost", env.vhost)


async def probe(base_dsn: str, base_amqp: str) -> None:
    """Fail early, with one line, when a service is unreachable."""
    import aio_pika

    try:
        connection = await asyncpg.connect(asyncpg_dsn(base_dsn), timeout=10)
        await connection.close()
    except (OSError, asyncpg.PostgresError) as error:
        raise ServiceError(f"cannot reach PostgreSQL at {base_dsn}: {error}") from None
    try:
        amqp = await aio_pika.connect(base_amqp, timeout=10)
        await amqp.close()
    except Exception as error:
        raise ServiceError(f"cannot reach RabbitMQ at {base_amqp}: {error}") from None
