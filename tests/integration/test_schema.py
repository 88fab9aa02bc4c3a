"""The migrations build the schema the SQLModel tables declare, and its constraints hold.

Runs against the real PostgreSQL in databases of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from billing_worker.db.migrate import (
    DatabaseUnavailable,
    alembic_config,
    current_revision,
    ensure_database,
    head_revision,
    migrate,
)
from billing_worker.db.tables import BillingUser, Plan, Transaction, VirtualAccount
from billing_worker.db.tables_billing import Subscription

pytestmark = pytest.mark.integration

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CHECK_VIOLATION = "23514"
UNIQUE_VIOLATION = "23505"


# --- databases ---------------------------------------------------------------


async def _drop_database(url: str) -> None:
    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database="postgres",
    )
    try:
        name = '"' + (parsed.database or "").replace('"', '""') + '"'
        await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await connection.close()


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database on the test server; dropped on exit."""
    base = os.environ.get("BILLING_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"billing_test_schema_{uuid.uuid4().hex[:8]}"
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        created = await ensure_database(url)
    except DatabaseUnavailable as down:
        pytest.skip(f"no PostgreSQL for integration tests: {down}")
    assert created
    try:
        yield url
    finally:
        await _drop_database(url)


@pytest.fixture(scope="module")
async def schema_url() -> AsyncIterator[str]:
    """The URL of this module's database, migrated to head."""
    async with fresh_database() as url:
        await migrate(url)
        yield url


@pytest.fixture(scope="module")
async def engine(schema_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(schema_url)
    yield engine
    await engine.dispose()


# --- helpers -----------------------------------------------------------------


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: c.dialect.get_table_names(c)))
    finally:
        await engine.dispose()


_SCHEMA_SNAPSHOT = """
SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
"""


async def _snapshot(engine: AsyncEngine) -> set[tuple[Any, ...]]:
    async with engine.connect() as connection:
        rows = await connection.exec_driver_sql(_SCHEMA_SNAPSHOT)
        return {tuple(row) for row in rows}


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "autogenerate_plugins": [
                "alembic.autogenerate.*",
                "alembic.ext.checkconstraint_byname",
            ],
        },
    )
    return list(compare_metadata(context, SQLModel.metadata))


def _declared_names() -> set[str]:
    names: set[str] = set()
    for table in SQLModel.metadata.tables.values():
        names.update(str(c.name) for c in table.constraints)
        names.update(str(i.name) for i in table.indexes)
    return names


async def _database_names(engine: AsyncEngine) -> set[str]:
    sql = """
        SELECT conname FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid <> 'alembic_version'::regclass
        UNION
        SELECT indexname FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
    """
    async with engine.connect() as connection:
        return {row[0] for row in await connection.exec_driver_sql(sql)}


async def _save(engine: AsyncEngine, *rows: SQLModel) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        session.add_all(rows)
        await session.commit()


async def _refused(engine: AsyncEngine, row: SQLModel) -> tuple[str, str]:
    """Insert ``row`` expecting an IntegrityError: (sqlstate, constraint name)."""
    with pytest.raises(IntegrityError) as refused:
        await _save(engine, row)
    orig: Any = refused.value.orig
    return orig.sqlstate, orig.__cause__.constraint_name


async def _new_user(engine: AsyncEngine) -> str:
    user_id = f"user-{uuid.uuid4().hex}"
    await _save(engine, BillingUser(user_id=user_id, email="payer@example.com"))
    return user_id


async def _new_plan(engine: AsyncEngine) -> Plan:
    plan = Plan(
        code=f"pro-{uuid.uuid4().hex[:8]}",
        name="Pro",
        price_minor=1_000,
        currency="USD",
        interval="month",
        interval_count=1,
    )
    await _save(engine, plan)
    return plan


# --- migrations --------------------------------------------------------------


async def test_migrating_an_empty_database_creates_every_table() -> None:
    async with fresh_database() as url:
        assert await current_revision(url) is None
        assert await _tables(url) == set()

        await migrate(url)

        assert await _tables(url) == set(SQLModel.metadata.tables) | {"alembic_version"}
        assert await current_revision(url) == head_revision() is not None


async def test_migrating_twice_changes_nothing(schema_url: str, engine: AsyncEngine) -> None:
    before = await _snapshot(engine)
    assert before

    await migrate(schema_url)
    await migrate(schema_url)

    assert await _snapshot(engine) == before
    assert await current_revision(schema_url) == head_revision()


async def test_concurrent_migrations_create_and_migrate_the_database_once() -> None:
    async with fresh_database() as url:
        await _drop_database(url)  # start from no database at all

        await asyncio.gather(*(migrate(url) for _ in range(3)))

        assert await current_revision(url) == head_revision()


async def test_the_migrated_schema_matches_the_sqlmodel_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == []
    # Alembic does not compare CHECK bodies or partial-index predicates: at least every
    # named constraint and index must exist, and nothing else.
    assert await _database_names(engine) == _declared_names()


async def test_downgrade_removes_the_schema_and_upgrade_restores_it() -> None:
    async with fresh_database() as url:
        await migrate(url)
        config = alembic_config(url)

        await asyncio.to_thread(command.downgrade, config, "base")
        assert await _tables(url) == {"alembic_version"}

        await asyncio.to_thread(command.upgrade, config, "head")
        assert await _tables(url) == set(SQLModel.metadata.tables) | {"alembic_version"}


# --- constraints -------------------------------------------------------------


async def test_a_negative_balance_is_refused(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)

    refused = await _refused(
        engine, VirtualAccount(user_id=user_id, currency="USD", balance_minor=-1)
    )

    assert refused == (CHECK_VIOLATION, "ck_virtual_accounts_balance_non_negative")


async def test_a_second_account_in_the_same_currency_is_refused(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)
    await _save(engine, VirtualAccount(user_id=user_id, currency="USD"))
    await _save(engine, VirtualAccount(user_id=user_id, currency="EUR"))

    refused = await _refused(engine, VirtualAccount(user_id=user_id, currency="USD"))

    assert refused == (UNIQUE_VIOLATION, "uq_virtual_accounts_user_id_currency")


async def test_a_completed_transaction_needs_a_completion_time(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)

    def deposit(**fields: Any) -> Transaction:
        return Transaction(
            user_id=user_id,
            kind="deposit",
            amount_minor=1_250,
            currency="USD",
            meta={"source": "test"},
            **fields,
        )

    refused = await _refused(engine, deposit(status="completed", completed_at=None))
    assert refused == (CHECK_VIOLATION, "ck_transactions_completed_at")
    refused = await _refused(engine, deposit(status="processing", completed_at=datetime.now(UTC)))
    assert refused == (CHECK_VIOLATION, "ck_transactions_completed_at")

    await _save(engine, deposit(status="completed", completed_at=datetime.now(UTC)))


async def test_only_one_live_subscription_per_user_and_plan(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)
    plan = await _new_plan(engine)
    # the plan's second version: the index holds per plan code, across versions (0011)
    second = Plan(**{**plan.model_dump(exclude={"id", "created_at", "updated_at"}),
                     "version": 2, "price_minor": 1_200})  # fmt: skip
    await _save(engine, second)

    def subscription(status: str, on: Plan = plan) -> Subscription:
        return Subscription(
            user_id=user_id, plan_id=on.id, plan_code=on.code, status=status,
            payment_source="balance",
        )  # fmt: skip

    await _save(engine, subscription("canceled"))
    await _save(engine, subscription("active"))
    await _save(engine, subscription("canceled"))

    refused = await _refused(engine, subscription("trialing"))
    on_another_version = await _refused(engine, subscription("trialing", second))

    assert refused == (UNIQUE_VIOLATION, "uq_subscriptions_one_live_per_user_plan")
    assert on_another_version == refused


async def test_a_plan_version_is_unique_per_code(engine: AsyncEngine) -> None:
    plan = await _new_plan(engine)
    again = Plan(**plan.model_dump(exclude={"id", "created_at", "updated_at"}))

    assert await _refused(engine, again) == (UNIQUE_VIOLATION, "uq_plans_code_version")


# --- unreachable server --------------------------------------------------------


async def test_an_unreachable_server_is_reported_in_one_line() -> None:
    with pytest.raises(DatabaseUnavailable) as down:
        await ensure_database("postgresql+asyncpg://postgres@127.0.0.1:1/billing")

    message = str(down.value)
    assert message.startswith("cannot reach PostgreSQL at 127.0.0.1:1: ")
    assert "\n" not in message
