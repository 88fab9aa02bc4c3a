"""Billing users and their customer ids at each provider."""

from __future__ import annotations

import asyncpg

# Provider name -> column holding that provider's customer id (a closed set, never input).
_CUSTOMER_COLUMNS = {"stripe": "stripe_customer_id", "yookassa": "yookassa_customer_id"}


class SqlUsers:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

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
