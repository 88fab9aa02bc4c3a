"""In-memory tax rates for the fake unit of work (the SQL is `db/taxes.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from decimal import Decimal

from billing_worker.domain.taxes import TaxRate
from support.fake_wallet import State


class FakeTaxRates:
    def __init__(self, state: State) -> None:
        self._state = state

    async def upsert(self, rate: TaxRate) -> TaxRate:
        # NUMERIC(6, 4) keeps four decimal places, as PostgreSQL returns them.
        stored = dataclasses.replace(rate, percent=rate.percent.quantize(_FOUR))
        self._state().tax_rates[rate.code] = stored
        return stored

    async def by_codes(self, codes: Sequence[str]) -> dict[str, TaxRate]:
        rates = self._state().tax_rates
        return {code: rates[code] for code in codes if code in rates}

    async def listing(self) -> list[TaxRate]:
        rates = self._state().tax_rates
        return [rates[code] for code in sorted(rates)]


_FOUR = Decimal("0.0001")
