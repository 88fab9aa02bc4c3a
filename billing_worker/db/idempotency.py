"""Idempotency records: one row per (scope, key) holding the request hash and the reply.

The primary key is the real guard: a second insert of the same key fails with a unique
violation, which means "already done" — the caller re-reads the stored reply.
A command's scope is its queue and the user it acts for (`user_scope`), so two users'
equal keys never meet, and nobody can take a key away from another user by using it
first. Commands for no user (`plan.upsert`) keep the queue's scope.
Provider events use the same table (scope `provider:<name>`, key = the provider's event
id) as an inbox: inserting the id is claiming the event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

_USER = "|user:"


def user_scope(scope: str, user_id: str | None) -> str:
    """The scope of a command of `user_id` on the queue `scope` (the queue alone: no user).

    Records written before scoping by user have the queue's scope alone; the marker
    cannot occur in a queue name, so no user's scope is ever a legacy one.
    """
    return scope if user_id is None else f"{scope}{_USER}{user_id}"


def queue_scope_of(scope: str) -> str:
    """The queue's part of a command's scope (`wallet.withdraw` of a user's scope)."""
    return scope.partition(_USER)[0]


@dataclass(frozen=True, slots=True)
class StoredReply:
    request_hash: str
    reply: dict[str, Any] | None


# Two arms, each an index lookup of the primary key (scope, key). Written as one join
# with `r.key = w.key AND (r.scope = w.scope OR r.scope = w.legacy ...)`, PostgreSQL
# looked up the scopes alone and filtered the keys: every record of the user's scope
# read for one (4,957 rows, 37 ms p50 on a user with 10,000 withdrawals).
_FIND_MANY = """
WITH w AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS w(scope, legacy, key, hash)
)
SELECT w.scope AS wanted, r.scope, r.request_hash, r.reply, w.key
FROM w JOIN idempotency_records r ON r.scope = w.scope AND r.key = w.key
UNION ALL
SELECT w.scope, r.scope, r.request_hash, r.reply, w.key
FROM w JOIN idempotency_records r ON r.scope = w.legacy AND r.key = w.key
WHERE w.legacy <> w.scope AND r.request_hash = w.hash AND r.reply IS NOT NULL
"""


class SqlIdempotency:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def find(self, scope: str, key: str) -> StoredReply | None:
        row = await self._db.fetchrow(
            "SELECT request_hash, reply FROM idempotency_records WHERE scope = $1 AND key = $2",
            scope,
            key,
        )
        return None if row is None else StoredReply(row["request_hash"], row["reply"])

    async def find_command(
        self, scope: str, legacy_scope: str, key: str, request_hash: str
    ) -> StoredReply | None:
        """A command's record in its own scope; failing that, the record an older worker
        wrote in the queue's scope for this very command (the same request hash, which
        covers the user too). A legacy record of another command is nobody's: ignored."""
        found = await self.find_many([(scope, legacy_scope, key, request_hash)])
        return found.get((scope, key))

    async def find_many(
        self, wanted: Sequence[tuple[str, str, str, str]]
    ) -> dict[tuple[str, str], StoredReply]:
        """(scope, legacy scope, key, request hash) -> the replayable record by (scope, key),
        as `find_command` picks it, for many commands in one round trip."""
        if not wanted:
            return {}
        rows = await self._db.fetch(
            _FIND_MANY,
            *(list(column) for column in zip(*wanted, strict=True)),
        )
        found: dict[tuple[str, str], StoredReply] = {}
        for row in sorted(rows, key=lambda r: r["scope"] != r["wanted"]):  # own scope first
            found.setdefault((row["wanted"], row["key"]), StoredReply(row["request_hash"],
                                                                      row["reply"]))  # fmt: skip
        return found

    async def record(self, scope: str, key: str, request_hash: str, reply: dict[str, Any]) -> None:
        """Store the reply; raises UniqueViolationError if another delivery got there first."""
        await self._db.execute(
            "INSERT INTO idempotency_records (scope, key, request_hash, reply) "
            "VALUES ($1, $2, $3, $4::jsonb)",
            scope,
            key,
            request_hash,
            json.dumps(reply, separators=(",", ":")),
        )

    async def seen_many(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of the (scope, key) pairs have a record, in one round trip."""
        if not keys:
            return set()
        rows = await self._db.fetch(
            "SELECT r.scope, r.key FROM unnest($1::text[], $2::text[]) AS w(scope, key) "
            "JOIN idempotency_records r ON r.scope = w.scope AND r.key = w.key",
            [scope for scope, _ in keys],
            [key for _, key in keys],
        )
        return {(row["scope"], row["key"]) for row in rows}

    async def claim(self, scope: str, key: str) -> bool:
        """Claim a key with no reply (inbox use); False when it was claimed before."""
        claimed = await self._db.fetchval(
            "INSERT INTO idempotency_records (scope, key, request_hash) VALUES ($1, $2, '') "
            "ON CONFLICT DO NOTHING RETURNING true",
            scope,
            key,
        )
        return bool(claimed)
