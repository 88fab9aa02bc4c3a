"""Idempotency records: one row per (scope, key) holding the request hash and the reply.

The primary key is the real guard: a second insert of the same key fails with a unique
violation, which means "already done" — the caller re-reads the stored reply.
Provider events use the same table (scope `provider:<name>`, key = the provider's event
id) as an inbox: inserting the id is claiming the event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class StoredReply:
    request_hash: str
    reply: dict[str, Any] | None


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

    async def find_many(self, scope: str, keys: list[str]) -> dict[str, StoredReply]:
        rows = await self._db.fetch(
            "SELECT key, request_hash, reply FROM idempotency_records "
            "WHERE scope = $1 AND key = ANY($2::text[])",
            scope,
            keys,
        )
        return {row["key"]: StoredReply(row["request_hash"], row["reply"]) for row in rows}

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

    async def claim(self, scope: str, key: str) -> bool:
        """Claim a key with no reply (inbox use); False when it was claimed before."""
        claimed = await self._db.fetchval(
            "INSERT INTO idempotency_records (scope, key, request_hash) VALUES ($1, $2, '') "
            "ON CONFLICT DO NOTHING RETURNING true",
            scope,
            key,
        )
        return bool(claimed)
