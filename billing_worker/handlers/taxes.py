"""Tax rates: `billing.tax-rate.upsert` (admins only: access.PRIVILEGED) and `.list`."""

from __future__ import annotations

from decimal import Decimal

from billing_contracts.taxes import ListTaxRates, TaxRateList, TaxRateOut, UpsertTaxRate
from billing_worker.domain.errors import NotFound
from billing_worker.domain.taxes import TaxRate, format_percent
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork


def tax_rate_out(rate: TaxRate) -> TaxRateOut:
    return TaxRateOut(
        code=rate.code,
        name=rate.name,
        percent=format_percent(rate.percent),
        inclusive=rate.inclusive,
    )


async def upsert_tax_rate(command: UpsertTaxRate, uow: UnitOfWork, deps: Deps) -> TaxRateOut:
    """Create the rate or change it in place: invoices already issued keep the copy of the
    rate each of their lines was issued with, so only new invoices see the change."""
    rate = TaxRate(command.code, command.name, Decimal(command.percent), command.inclusive)
    return tax_rate_out(await uow.tax_rates.upsert(rate))


async def list_tax_rates(query: ListTaxRates, uow: UnitOfWork, deps: Deps) -> TaxRateList:
    return TaxRateList(tax_rates=[tax_rate_out(rate) for rate in await uow.tax_rates.listing()])


async def rates_of(codes: list[str | None], uow: UnitOfWork) -> list[TaxRate | None]:
    """Each line's rate by its code (None: untaxed); an unknown code is `not_found`."""
    wanted = sorted({code for code in codes if code is not None})
    found = await uow.tax_rates.by_codes(wanted) if wanted else {}
    for code in wanted:
        if code not in found:
            raise NotFound(f"no tax rate {code!r}", tax_rate=code)
    return [None if code is None else found[code] for code in codes]
