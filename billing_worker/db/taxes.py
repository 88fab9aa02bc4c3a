"""The tax rates' SQL: one row per code, upserted in place (invoices copy what they use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import asyncpg

from billing_worker.domain.taxes import TaxRate

_UPSERT = """
INSERT INTO tax_rates (id, code, name, percent, inclusive) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (code) DO UPDATE
SET name = excluded.name, percent = excluded.percent, inclusive = excluded.inclusive,
    updated_at = now()
RETURNING code, name, percent, inclusive
"""
_COLUMNS = "code, name, percent, inclusive"


def _rate(record: Any) -> TaxRate:
    return TaxRate(record["code"], record["name"], record["percent"], record["inclusive"])


class SqlTaxRates:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection

    async def upsert(self, rate: TaxRate) -> TaxRate:
        """Create the rate, or change the one with its code (no invoice is touched)."""
        record = await self._db.fetchrow(
            _UPSERT, uuid4(), rate.code, rate.name, rate.percent, rate.inclusive
        )
        return _rate(record)

    async def by_codes(self, codes: Sequence[str]) -> dict[str, TaxRate]:
        """The rates with these codes (an unknown code is left out)."""
        records = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM tax_rates WHERE code = ANY($1::text[])",  # noqa: S608
            list(codes),
        )
        return {record["code"]: _rate(record) for record in records}

    async def listing(self) -> list[TaxRate]:
        records = await self._db.fetch(f"SELECT {_COLUMNS} FROM tax_rates ORDER BY code")  # noqa: S608
        return [_rate(record) for record in records]
