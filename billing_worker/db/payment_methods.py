"""Saved payment methods: the cards the providers keep for a user, as they describe them.

A row is keyed by (provider, provider_method_id). Detaching keeps it (`detached_at`)
for history; a detached method is left out of everything that lists or charges
methods. At most one live method per user and provider is the default (a partial
unique index, migration 0010).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class Card:
    """A card as the provider's own object describes it (never a callback's body)."""

    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


@dataclass(frozen=True, slots=True)
class MethodRow:
    id: UUID
    user_id: str
    provider: str
    ref: str  # the provider's id of the method
    card: Card
    is_default: bool
    created_at: datetime
    detached_at: datetime | None = None


_COLUMNS = (
    "id, user_id, provider, provider_method_id, brand, last4, exp_month, exp_year, "
    "is_default, created_at, detached_at"
)


def _row(record: Any) -> MethodRow:
    return MethodRow(
        id=record["id"], user_id=record["user_id"], provider=record["provider"],
        ref=record["provider_method_id"],
        card=Card(record["brand"], record["last4"], record["exp_month"], record["exp_year"]),
        is_default=record["is_default"], created_at=record["created_at"],
        detached_at=record["detached_at"],
    )  # fmt: skip


class SqlMethods:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def save(
        self, user_id: str, provider: str, ref: str, card: Card
    ) -> tuple[MethodRow, bool]:
        """Save the method for the user (its card as the provider told it) and return it
        with whether it is new. A method already saved keeps its owner: the caller checks
        `row.user_id`."""
        inserted = await self._db.fetchrow(
            f"INSERT INTO payment_methods (id, user_id, provider, provider_method_id, brand, "  # noqa: S608
            f"last4, exp_month, exp_year) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            f"ON CONFLICT (provider, provider_method_id) DO NOTHING RETURNING {_COLUMNS}",
            uuid.uuid4(), user_id, provider, ref, card.brand, card.last4, card.exp_month,
            card.exp_year,
        )  # fmt: skip
        if inserted is not None:
            return _row(inserted), True
        existing = await self._db.fetchrow(
            f"UPDATE payment_methods SET brand = coalesce($4, brand), "  # noqa: S608
            f"last4 = coalesce($5, last4), exp_month = coalesce($6, exp_month), "
            f"exp_year = coalesce($7, exp_year) "
            f"WHERE provider = $1 AND provider_method_id = $2 "
            f"AND user_id = $3 RETURNING {_COLUMNS}",
            provider, ref, user_id, card.brand, card.last4, card.exp_month, card.exp_year,
        )  # fmt: skip
        if existing is None:  # another user's: unchanged
            existing = await self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM payment_methods "  # noqa: S608
                f"WHERE provider = $1 AND provider_method_id = $2",
                provider, ref,
            )  # fmt: skip
        return _row(existing), False

    async def of_user(self, user_id: str, provider: str | None = None) -> list[MethodRow]:
        """The user's live methods, oldest first."""
        records = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM payment_methods "  # noqa: S608
            f"WHERE user_id = $1 AND ($2::text IS NULL OR provider = $2) "
            f"AND detached_at IS NULL ORDER BY created_at, id",
            user_id, provider,
        )  # fmt: skip
        return [_row(record) for record in records]

    async def get(
        self, user_id: str, provider: str, ref: str, *, lock: bool = False
    ) -> MethodRow | None:
        """The user's live method; None for another user's, a detached or an unknown one."""
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM payment_methods "  # noqa: S608
            f"WHERE user_id = $1 AND provider = $2 AND provider_method_id = $3 "
            f"AND detached_at IS NULL{' FOR UPDATE' if lock else ''}",
            user_id, provider, ref,
        )  # fmt: skip
        return None if record is None else _row(record)

    async def default_of(self, user_id: str, provider: str) -> MethodRow | None:
        record = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM payment_methods "  # noqa: S608
            f"WHERE user_id = $1 AND provider = $2 AND is_default AND detached_at IS NULL",
            user_id, provider,
        )  # fmt: skip
        return None if record is None else _row(record)

    async def detach(self, method_id: UUID, at: datetime) -> None:
        await self._db.execute(
            "UPDATE payment_methods SET detached_at = $2, is_default = false "
            "WHERE id = $1 AND detached_at IS NULL",
            method_id, at,
        )  # fmt: skip

    async def set_default(self, user_id: str, provider: str, method_id: UUID) -> None:
        """Make the method the user's only default at its provider (two statements: the
        unique index is checked row by row)."""
        await self._db.execute(
            "UPDATE payment_methods SET is_default = false "
            "WHERE user_id = $1 AND provider = $2 AND is_default AND id <> $3",
            user_id, provider, method_id,
        )  # fmt: skip
        await self._db.execute(
            "UPDATE payment_methods SET is_default = true WHERE id = $1 AND detached_at IS NULL",
            method_id,
        )
