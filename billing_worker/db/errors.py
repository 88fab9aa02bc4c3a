"""The repositories' translation of asyncpg's errors into the domain's.

What the service and the handlers act on — a unique key already taken, a deadlock, a
serialization failure — leaves `billing_worker/db/` as a `WriteConflict` (a
`DuplicateKey` naming its constraint), chained to asyncpg's error (`__cause__`), so a
failure's logged reason (`redaction.failure_reason`: SQLSTATE and primary message)
stays what it was. Every other database error leaves as asyncpg raised it.

Where: `db.uow.unit_of_work`, around all the work of a unit (its COMMIT included), and
the repository methods whose duplicate a handler acts on inside its transaction
(`SqlSubscriptions.insert`: a second live subscription of a plan).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from billing_worker.domain.errors import DuplicateKey, WriteConflict


@contextmanager
def translated() -> Iterator[None]:
    """Run the block with asyncpg's conflicts raised as `WriteConflict`s."""
    try:
        yield
    except asyncpg.UniqueViolationError as taken:
        raise DuplicateKey(str(taken), constraint=taken.constraint_name) from taken
    except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as conflict:
        raise WriteConflict(
            str(conflict), constraint=getattr(conflict, "constraint_name", None)
        ) from conflict
