"""The repository contract's handle on one implementation (tests/contract/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest

from billing_worker.ports import UnitOfWork


@dataclass
class Repo:
    name: str  # "fake" or "postgres"
    uow: UnitOfWork
    savepoint: Callable[[], AbstractAsyncContextManager[object]]

    @asynccontextmanager
    async def refused(self, error: type[BaseException]) -> AsyncIterator[None]:
        """The block must raise `error`; what it wrote is taken back, the rest stays."""
        with pytest.raises(error):
            async with self.savepoint():
                yield


def as_json(reply: object) -> object:
    """PostgreSQL hands jsonb back as its text (no codec is set): compared as JSON."""
    return json.loads(reply) if isinstance(reply, str) else reply
