"""The two implementations of `billing_worker.ports.UnitOfWork` the contract runs on.

`repo` is parametrised: `fake` (tests/support/fake_uow.py, in memory) and `postgres` (the
SQL unit of work on one connection to the run's database, marked integration). The
PostgreSQL leg runs in one transaction that is rolled back at the end, so it leaves
nothing behind; a refusal is taken in a savepoint (`repo.refused`), as a refused
statement aborts the PostgreSQL transaction it runs in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from billing_worker.db.uow import UnitOfWork as SqlUnitOfWork
from support.contract import Repo
from support.fake_uow import FakeDatabase


@pytest.fixture(params=["fake", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the fake; the run's database URL for PostgreSQL."""
    if request.param == "fake":
        return None
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
async def repo(backend: str | None) -> AsyncIterator[Repo]:
    if backend is None:
        db = FakeDatabase()
        async with db.transaction() as fake:
            yield Repo("fake", fake, db.savepoint)
        return
    parsed = make_url(backend)
    connection = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            yield Repo("postgres", SqlUnitOfWork(connection), connection.transaction)
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
