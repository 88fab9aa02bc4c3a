"""Tax rates and the tax columns of invoices and plans: the same assertions on the fake
and on PostgreSQL (see conftest.py). A percent comes back exact (NUMERIC(6, 4))."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from billing_worker.db.invoices import NewInvoice
from billing_worker.db.subscriptions import PlanRow
from billing_worker.domain.invoices import Line, Priced
from billing_worker.domain.taxes import TaxRate
from support.contract import Repo

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def test_a_rate_is_upserted_in_place_and_found_by_its_code(repo: Repo) -> None:
    rates = repo.uow.tax_rates
    code, other = unique("vat"), unique("gst")
    made = await rates.upsert(TaxRate(code, "VAT", Decimal("19.5"), False))
    assert made == TaxRate(code, "VAT", Decimal("19.5"), False)
    assert (await rates.upsert(TaxRate(code, "VAT 2", Decimal("8.875"), True))).percent == Decimal(
        "8.875"
    )
    await rates.upsert(TaxRate(other, "GST", Decimal("0"), False))
    found = await rates.by_codes([code, other, unique("none")])
    assert found == {
        code: TaxRate(code, "VAT 2", Decimal("8.875"), True),
        other: TaxRate(other, "GST", Decimal("0"), False),
    }
    listed = [r.code for r in await rates.listing() if r.code in (code, other)]
    assert listed == sorted([code, other])


async def test_an_invoice_keeps_each_lines_tax_and_its_sum(repo: Repo) -> None:
    user = unique("contract")
    lines = (
        Line("Seat", 3, 150, 450, "vat", Decimal("19"), False, 86),
        Line("Box", 1, 1000, 1000, "vat-in", Decimal("20"), True, 167),
        Line("Free", 1, 500, 500),
    )
    new = NewInvoice(
        id=uuid.uuid4(), user_id=user, order_id=None, status="open", due_at=None,
        priced=Priced("USD", lines, 450 + 833 + 500, 450 + 833 + 500 + 253, 253), created_at=T0,
    )  # fmt: skip
    made = await repo.uow.invoices.create(new)
    assert made is not None
    assert (made.tax_minor, made.lines) == (253, lines)
    assert await repo.uow.invoices.by_id(new.id) == made


async def test_a_plan_version_keeps_its_copy_of_the_rate(repo: Repo) -> None:
    plan = PlanRow(id=uuid.uuid4(), code=unique("plan"), name="Pro", price_minor=1000,
                   currency="USD", interval="month", interval_count=1, trial_days=0,
                   stripe_price_id=None, active=True, tax_rate_code="vat",
                   tax_percent=Decimal("20"), tax_inclusive=False)  # fmt: skip
    await repo.uow.plans.upsert(plan)
    assert await repo.uow.plans.by_code(plan.code) == plan
    second = dataclasses.replace(plan, id=uuid.uuid4(), version=2, tax_rate_code=None,
                                 tax_percent=None, tax_inclusive=None)  # fmt: skip
    await repo.uow.plans.add_version(second)
    assert [p.tax_rate_code for p in await repo.uow.plans.versions(plan.code)] == ["vat", None]
