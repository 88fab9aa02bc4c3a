"""The transactional outbox: events are rows written with the state they announce.

`OutboxRelay` (messaging/outbox_publisher.py) sends unpublished rows to RabbitMQ with
publisher confirms and marks them published; `FOR UPDATE SKIP LOCKED` lets several
worker replicas share the work without sending one row twice at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    event_id: UUID
    exchange: str
    routing_key: str
    type: str
    body: str  # the JSON body, ready to send
    headers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PendingMessage:
    id: int
    message: OutboxMessage
    created_at: datetime


_INSERT = """
INSERT INTO outbox (event_id, exchange, routing_key, type, payload, headers, created_at)
SELECT m.event_id, m.exchange, m.routing_key, m.type, m.payload::jsonb, m.headers::jsonb,
       clock_timestamp()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
     WITH ORDINALITY AS m(event_id, exchange, routing_key, type, payload, headers, n)
ORDER BY m.n
"""

# The same, plus the command's idempotency record, in one round trip.
_INSERT_WITH_RECORD = f"""
WITH events AS ({_INSERT})
INSERT INTO idempotency_records (scope, key, request_hash, reply)
VALUES ($7, $8, $9, $10::jsonb)
"""  # noqa: S608 - a constant statement


# Outbox rows and many commands' idempotency records, in one round trip.
_INSERT_WITH_RECORDS = f"""
WITH events AS ({_INSERT})
INSERT INTO idempotency_records (scope, key, request_hash, reply)
SELECT r.scope, r.key, r.request_hash, r.reply::jsonb
FROM unnest($7::text[], $8::text[], $9::text[], $10::text[]) AS r(scope, key, request_hash, reply)
"""  # noqa: S608 - a constant statement


def _columns(messages: Sequence[OutboxMessage]) -> list[list[Any]]:
    return [
        [m.event_id for m in messages],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [m.type for m in messages],
        [m.body for m in messages],
        [json.dumps(m.headers) for m in messages],
    ]


async def insert(connection: asyncpg.Connection, messages: Sequence[OutboxMessage]) -> None:
    """Write every message of one unit of work in a single statement."""
    if messages:
        await connection.execute(_INSERT, *_columns(messages))


async def insert_with_record(
    connection: asyncpg.Connection,
    messages: Sequence[OutboxMessage],
    record: tuple[str, str, str, str],
) -> None:
    """Outbox rows and the (scope, key, request_hash, reply_json) record, one statement.

    Raises UniqueViolationError when another delivery recorded the key first.
    """
    await connection.execute(_INSERT_WITH_RECORD, *_columns(messages), *record)


async def lock_batch(
    connection: asyncpg.Connection,
    limit: int,
    *,
    older_than: float = 0.0,
    skip: Collection[UUID] = (),
) -> list[PendingMessage]:
    """Lock the oldest unpublished rows no other publisher holds (call inside a
    transaction): written at least `older_than` seconds ago, and not in `skip`."""
    rows = await connection.fetch(
        """
        SELECT id, event_id, exchange, routing_key, type, payload::text AS body, headers,
               created_at
        FROM outbox
        WHERE published_at IS NULL
          AND created_at <= clock_timestamp() - make_interval(secs => $2)
          AND NOT (event_id = ANY($3::uuid[]))
        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
        older_than,
        list(skip),
    )
    return [
        PendingMessage(
            id=row["id"],
            message=OutboxMessage(
                row["event_id"], row["exchange"], row["routing_key"], row["type"], row["body"],
                row["headers"],
            ),
            created_at=row["created_at"],
        )
        for row in rows
    ]  # fmt: skip


async def mark_published(connection: asyncpg.Connection, ids: Sequence[int]) -> None:
    await connection.execute(
        "UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1 "
        "WHERE id = ANY($1::bigint[])",
        list(ids),
    )


async def mark_published_events(connection: asyncpg.Connection, event_ids: Sequence[UUID]) -> None:
    """Mark rows published by their event ids (published inline, right after the commit)."""
    await connection.execute(
        "UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1 "
        "WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL",
        list(event_ids),
    )


async def count_attempt(connection: asyncpg.Connection, ids: Sequence[int]) -> None:
    await connection.execute(
        "UPDATE outbox SET attempts = attempts + 1 WHERE id = ANY($1::bigint[])", list(ids)
    )


async def lag_seconds(connection: asyncpg.Connection) -> float:
    """Age of the oldest unpublished event (0 when everything is out)."""
    value = await connection.fetchval(
        "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) "
        "FROM outbox WHERE published_at IS NULL"
    )
    return float(value)


async def status(connection: asyncpg.Connection) -> dict[str, object]:
    """What `billing-worker outbox status` prints."""
    row = await connection.fetchrow(
        """
        SELECT count(*) FILTER (WHERE published_at IS NULL) AS unpublished,
               min(created_at) FILTER (WHERE published_at IS NULL) AS oldest_unpublished,
               count(*) FILTER (WHERE published_at > clock_timestamp() - interval '1 hour')
                   AS published_last_hour,
               max(published_at) AS last_published,
               count(*) AS total
        FROM outbox
        """
    )
    return dict(row) if row else {}


async def insert_with_records(
    connection: asyncpg.Connection,
    messages: Sequence[OutboxMessage],
    records: Sequence[tuple[str, str, str, str]],
) -> None:
    """Outbox rows and several (scope, key, request_hash, reply_json) records at once."""
    await connection.execute(
        _INSERT_WITH_RECORDS,
        *_columns(messages),
        *(list(column) for column in zip(*records, strict=True)),
    )
