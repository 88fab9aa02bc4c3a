"""asyncpg's conflicts leave the repositories as domain errors, with the same logged reason."""

from __future__ import annotations

import ast
from pathlib import Path

import asyncpg
import pytest

from billing_worker.db.errors import translated
from billing_worker.domain.errors import DuplicateKey, WriteConflict
from billing_worker.redaction import failure_reason

ROOT = Path(__file__).resolve().parents[2] / "billing_worker"


def server_error(kind: type[asyncpg.PostgresError], sqlstate: str, **fields: str) -> Exception:
    return kind.new({"C": sqlstate, "M": f"{kind.__name__} here", "D": "Key (id)=(1)", **fields})


def test_a_unique_violation_is_a_duplicate_key_naming_its_constraint() -> None:
    taken = server_error(asyncpg.UniqueViolationError, "23505", n="pk_transactions")
    with pytest.raises(DuplicateKey) as raised, translated():
        raise taken
    assert raised.value.constraint == "pk_transactions"
    assert raised.value.__cause__ is taken
    assert failure_reason(raised.value) == failure_reason(taken)  # never the DETAIL either
    assert "Key (id)" not in failure_reason(raised.value)


@pytest.mark.parametrize(
    ("kind", "sqlstate"),
    [(asyncpg.SerializationError, "40001"), (asyncpg.DeadlockDetectedError, "40P01")],
)
def test_deadlocks_and_serialization_failures_are_write_conflicts(
    kind: type[asyncpg.PostgresError], sqlstate: str
) -> None:
    conflict = server_error(kind, sqlstate)
    with pytest.raises(WriteConflict) as raised, translated():
        raise conflict
    assert not isinstance(raised.value, DuplicateKey)
    assert raised.value.constraint is None
    assert raised.value.__cause__ is conflict


def test_other_database_errors_leave_as_asyncpg_raised_them() -> None:
    check = server_error(asyncpg.CheckViolationError, "23514", n="ck_positive")
    with pytest.raises(asyncpg.CheckViolationError) as raised, translated():
        raise check
    assert raised.value is check


def asyncpg_errors_caught(tree: ast.Module) -> list[str]:
    """The `except` clauses that name asyncpg or something imported from it."""
    from_asyncpg = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncpg"
        for alias in node.names
    }
    caught = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
            if "asyncpg" in names or names & from_asyncpg:
                caught.append(ast.unparse(node.type))
    return caught


def test_the_service_and_the_handlers_catch_no_asyncpg_error() -> None:
    """They catch the domain's errors; asyncpg's are translated in billing_worker/db/."""
    paths = [ROOT / name for name in ("service.py", "commands.py", "units.py", "replies.py")]
    paths += sorted((ROOT / "handlers").glob("*.py"))
    caught = {
        path.relative_to(ROOT).as_posix(): found
        for path in paths
        if (found := asyncpg_errors_caught(ast.parse(path.read_text())))
    }
    assert caught == {}
