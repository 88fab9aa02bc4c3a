"""The tax rate calls of `BillingClient`: set a rate (admins only), list the rates."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.taxes import ListTaxRates, TaxRateList, TaxRateOut, UpsertTaxRate


class TaxRateCalls(RpcClient):
    """`billing.tax-rate.*`."""

    async def upsert_tax_rate(
        self,
        *,
        code: str,
        name: str,
        percent: str,
        inclusive: bool,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> TaxRateOut:
        """`billing.tax-rate.upsert` (admins only): create or change the rate `code`;
        `percent` is a decimal string (0 <= p < 100, at most 4 decimal places)."""
        command = UpsertTaxRate(
            idempotency_key=idempotency_key,
            code=code,
            name=name,
            percent=percent,
            inclusive=inclusive,
        )
        return await self.request(names.TAX_RATE_UPSERT, command, TaxRateOut, timeout=timeout)

    async def list_tax_rates(self, *, timeout: float | None = None) -> TaxRateList:
        """`billing.tax-rate.list`: every tax rate, by code."""
        return await self.request(names.TAX_RATE_LIST, ListTaxRates(), TaxRateList, timeout=timeout)
