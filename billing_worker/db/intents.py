"""Provider intents: the provider calls a command committed to and has not settled yet.

An intent is inserted in the command's first transaction (with the rows it concerns)
and deleted by `take` in the transaction that records the provider's answer. `take` is a
`DELETE ... RETURNING`: of two deliveries (or a delivery and the reconciler) settling
the same intent, exactly one gets it; the other waits for its commit and finds the
stored reply instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

_COLUMNS = (
    "i.id, i.kind, i.provider, i.user_id, i.subscription_id, i.scope, i.idempotency_key, "
    "i.request_hash, i.request, i.created_at, "
    # The provider's customer known for the user (a payment made for it needs it).
    "CASE i.provider WHEN 'stripe' THEN u.stripe_customer_id "
    "WHEN 'yookassa' THEN u.yookassa_customer_id END AS customer_ref"
)
_FROM = "provider_intents i LEFT JOIN billing_users u ON u.user_id = i.user_id"

# Intents nobody touched for `$1` seconds (their command's worker died, or the provider
# call failed and no redelivery came): the claim bumps `updated_at`, a lease that keeps
# other replicas off them for another `$1` seconds.
_CLAIM_STALE = f"""
WITH claimed AS (
    UPDATE provider_intents SET updated_at = now()
    WHERE id IN (
        SELECT id FROM provider_intents
        WHERE updated_at < now() - make_interval(secs => $1)
        ORDER BY updated_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
)
SELECT {_COLUMNS} FROM claimed i LEFT JOIN billing_users u ON u.user_id = i.user_id
"""  # noqa: S608 - constant column lists only


@dataclass(frozen=True, slots=True)
class Intent:
    """One provider call to make (again: the provider dedupes on the key from `id`)."""

    id: UUID  # the transaction / subscription it concerns; the provider's idempotency key
    kind: str
    provider: str
    user_id: str
    subscription_id: UUID | None = None
    scope: str | None = None  # the command to answer, if any
    idempotency_key: str | None = None
    request_hash: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    customer_ref: str | None = None  # not stored: read from billing_users
    created_at: datetime | None = None


def _intent(record: Any) -> Intent:
    request = record["request"]
    if isinstance(request, str):  # jsonb arrives as text
        request = json.loads(request)
    return Intent(
        id=record["id"],
        kind=record["kind"],
        provider=record["provider"],
        user_id=record["user_id"],
        subscription_id=record["subscription_id"],
        scope=record["scope"],
        idempotency_key=record["idempotency_key"],
        request_hash=record["request_hash"],
        request=dict(request or {}),
        customer_ref=record["customer_ref"],
        created_at=record["created_at"],
    )


class SqlIntents:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def insert(self, intent: Intent) -> None:
        """Raises UniqueViolationError when a concurrent delivery inserted it first."""
        await self._db.execute(
            "INSERT INTO provider_intents (id, kind, provider, user_id, subscription_id, "
            "scope, idempotency_key, request_hash, request) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
            intent.id, intent.kind, intent.provider, intent.user_id, intent.subscription_id,
            intent.scope, intent.idempotency_key, intent.request_hash,
            json.dumps(intent.request, separators=(",", ":")),
        )  # fmt: skip

    async def of_command(self, scope: str, key: str) -> Intent | None:
        """The intent a delivery of this command left, touched (its lease renewed)."""
        record = await self._db.fetchrow(
            f"WITH touched AS (UPDATE provider_intents SET updated_at = now() "  # noqa: S608
            f"WHERE scope = $1 AND idempotency_key = $2 RETURNING *) "
            f"SELECT {_COLUMNS} FROM touched i LEFT JOIN billing_users u ON u.user_id = i.user_id",
            scope,
            key,
        )
        return None if record is None else _intent(record)

    async def take(self, intent_id: UUID) -> bool:
        """Delete the intent to settle it; False when another settled it first."""
        taken = await self._db.fetchval(
            "DELETE FROM provider_intents WHERE id = $1 RETURNING true", intent_id
        )
        return bool(taken)

    async def of_subscription(self, subscription_id: UUID) -> list[Intent]:
        records = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE i.subscription_id = $1",  # noqa: S608
            subscription_id,
        )
        return [_intent(record) for record in records]

    async def claim_stale(self, after_seconds: float, limit: int) -> list[Intent]:
        records = await self._db.fetch(_CLAIM_STALE, after_seconds, limit)
        return [_intent(record) for record in records]
