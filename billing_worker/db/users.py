"""Billing users and their customer ids at each provider."""

from __future__ import annotations

import uuid
from uuid import UUID

import asyncpg

# Provider name -> column holding that provider's customer id (a closed set, never input).
_CUSTOMER_COLUMNS = {"stripe": "stripe_customer_id", "yookassa": "yookassa_customer_id"}


class SqlUsers:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def ensure(self, user_id: str) -> None:
        """The billing user, created on first use (a transaction row refers to it)."""
        await self._db.execute(
            "INSERT INTO billing_users (id, user_id) VALUES ($1, $2) "
            "ON CONFLICT (user_id) DO NOTHING",
            uuid.uuid4(),
            user_id,
        )

    async def customer_ref(self, user_id: str, provider: str) -> str | None:
        column = _CUSTOMER_COLUMNS[provider]
        value = await self._db.fetchval(
            f"SELECT {column} FROM billing_users WHERE user_id = $1",  # noqa: S608
            user_id,
        )
        return None if value is None else str(value)

    async def remember_customer(self, user_id: str, provider: str, customer_ref: str) -> str:
        """Store the id unless one is stored already; returns the stored one."""
        column = _CUSTOMER_COLUMNS[provider]
        value = await self._db.fetchval(
            f"UPDATE billing_users SET {column} = coalesce({column}, $2) "  # noqa: S608
            f"WHERE user_id = $1 RETURNING {column}",
            user_id,
            customer_ref,
        )
        return str(value)

    async def save_payment_method(self, user_id: str, provider: str, method_ref: str) -> None:
        """Remember a method the provider saved for recurring charges (idempotent)."""
        await self._db.execute(
            "INSERT INTO payment_methods (id, user_id, provider, provider_method_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (provider, provider_method_id) DO NOTHING",
            uuid.uuid4(),
            user_id,
            provider,
            method_ref,
        )

    async def payment_method_of(self, user_id: str, provider: str, method_ref: str) -> UUID | None:
        """The id of the user's saved method at the provider; None if it is not theirs."""
        value = await self._db.fetchval(
            "SELECT id FROM payment_methods "
            "WHERE user_id = $1 AND provider = $2 AND provider_method_id = $3 "
            "AND detached_at IS NULL",  # a detached method is never charged again
            user_id,
            provider,
            method_ref,
        )
        return value  # type: ignore[no-any-return]

    async def email(self, user_id: str) -> str | None:
        """The e-mail stored for the user (by `billing.subscription.create`), if any."""
        value = await self._db.fetchval(
            "SELECT email FROM billing_users WHERE user_id = $1", user_id
        )
        return None if value is None else str(value)
