"""Tax rates on the real PostgreSQL and RabbitMQ: an admin sets rates (privileged: opened
here as local development does), an invoice's lines are taxed at them exactly, the reply,
`billing.invoice.get` and `invoice.created` carry the tax, a later rate change leaves the
issued invoice alone, and the audit finds nothing wrong (and a tampered tax)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing_contracts.client import BillingClient, NotFound
from billing_contracts.invoices import InvoiceLineIn
from billing_contracts.money import Money
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Its own database: the audit judges the whole of it."""
    return fresh_database_url


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    # billing.tax-rate.upsert is privileged: open it as local development does
    return make_settings(database_url, rabbitmq_url, credit_without_policy=True)


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = build_worker(settings)
    async with worker.app:
        yield worker


def key() -> str:
    return uuid.uuid4().hex


def money(amount: str, currency: str) -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def line(price: str, currency: str, tax_rate: str, quantity: int = 1) -> InvoiceLineIn:
    return InvoiceLineIn(
        description="item", quantity=quantity,
        unit_price=Money(amount=price, currency=currency), tax_rate=tax_rate,
    )  # fmt: skip


async def findings(worker: Worker) -> dict[str, list[dict[str, Any]]]:
    async with driver_connection(worker.engine) as db:
        return {f.check: f.rows for f in await audit(db) if "invoice" in f.check}


async def test_taxed_invoices_over_the_bus_read_back_announced_and_audited(
    bus: Bus, worker: Worker, rabbitmq_url: str
) -> None:
    user = f"tax-user-{uuid.uuid4().hex[:8]}"
    async with BillingClient(rabbitmq_url, timeout=30) as billing:  # sets the AMQP user_id
        vat = await billing.upsert_tax_rate(
            code="vat19", name="VAT", percent="19", inclusive=False, idempotency_key=key()
        )
        assert (vat.percent, vat.inclusive) == ("19", False)
        await billing.upsert_tax_rate(
            code="vat20-in", name="VAT incl.", percent="20", inclusive=True, idempotency_key=key()
        )
        await billing.upsert_tax_rate(
            code="kw5", name="KW", percent="5", inclusive=False, idempotency_key=key()
        )
        listed = await billing.list_tax_rates()
        assert [r.code for r in listed.tax_rates] == ["kw5", "vat19", "vat20-in"]
        usd = await billing.create_invoice(
            user_id=user, currency="USD", idempotency_key=key(),
            lines=[line("1.50", "USD", "vat19", 3), line("10.00", "USD", "vat20-in")],
        )  # fmt: skip
        kwd = await billing.create_invoice(
            user_id=user, currency="KWD", idempotency_key=key(),
            lines=[line("1.250", "KWD", "kw5")],
        )  # fmt: skip
        with pytest.raises(NotFound):
            await billing.create_invoice(
                user_id=user, currency="USD", idempotency_key=key(),
                lines=[line("1.00", "USD", "no-such-rate")],
            )  # fmt: skip
        # a later change of the rate: the issued invoice keeps its tax
        await billing.upsert_tax_rate(
            code="vat19", name="VAT", percent="25", inclusive=True, idempotency_key=key()
        )
        again = await billing.get_invoice(user_id=user, invoice_id=usd.id)

    # 4.50 + 19 %: 0.855 -> 0.86; 10.00 holds 20 %: 1.6667 -> 1.67 (net 8.33)
    assert [ln.tax for ln in usd.lines] == [
        Money(amount="0.86", currency="USD"),
        Money(amount="1.67", currency="USD"),
    ]
    assert (usd.subtotal, usd.tax, usd.total) == (
        Money(amount="12.83", currency="USD"),
        Money(amount="2.53", currency="USD"),
        Money(amount="15.36", currency="USD"),
    )
    assert again == usd  # read back from PostgreSQL: the same, rate change or not
    # KWD: 5 % of 1.250 is 62.5 fils -> 62 (even)
    assert (kwd.tax, kwd.total) == (
        Money(amount="0.062", currency="KWD"),
        Money(amount="1.312", currency="KWD"),
    )
    created = (await bus.event("invoice.created", lambda d: d["invoice_id"] == str(usd.id)))["data"]
    assert (created["tax"], created["subtotal"], created["total"]) == (
        money("2.53", "USD"), money("12.83", "USD"), money("15.36", "USD"),
    )  # fmt: skip
    assert [ln["tax_percent"] for ln in created["lines"]] == ["19", "20"]
    assert await findings(worker) == {}

    async with driver_connection(worker.engine) as db:
        try:  # a line whose tax is not its stored rate's (the sums kept consistent)
            await db.execute(
                "UPDATE invoice_lines SET tax_minor = tax_minor + 1 "
                "WHERE invoice_id = $1 AND position = 0", usd.id,
            )  # fmt: skip
            await db.execute("UPDATE invoices SET tax_minor = tax_minor + 1, "
                             "total_minor = total_minor + 1 WHERE id = $1", usd.id)  # fmt: skip
            tampered = await findings(worker)
        finally:
            await db.execute(
                "UPDATE invoice_lines SET tax_minor = tax_minor - 1 "
                "WHERE invoice_id = $1 AND position = 0", usd.id,
            )  # fmt: skip
            await db.execute("UPDATE invoices SET tax_minor = tax_minor - 1, "
                             "total_minor = total_minor - 1 WHERE id = $1", usd.id)  # fmt: skip
    assert set(tampered) == {"invoice line whose tax is not its stored rate's"}
    [row] = tampered["invoice line whose tax is not its stored rate's"]
    assert (row["tax_minor"], row["expected_tax_minor"]) == (87, 86)
    assert await findings(worker) == {}


async def test_a_taxed_plan_charges_its_period_invoice_total_and_the_audit_agrees(
    bus: Bus, worker: Worker, rabbitmq_url: str
) -> None:
    user, code = f"tax-sub-{uuid.uuid4().hex[:8]}", f"plan-{uuid.uuid4().hex[:8]}"
    async with BillingClient(rabbitmq_url, timeout=30) as billing:
        await billing.upsert_tax_rate(
            code="vat20", name="VAT", percent="20", inclusive=False, idempotency_key=key()
        )
    plan = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": money("10.00", "USD"), "tax_rate": "vat20"},
    )  # fmt: skip
    assert plan["ok"], plan
    assert (plan["data"]["tax_rate"], plan["data"]["tax_percent"]) == ("vat20", "20")
    deposit = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": key(), "user_id": user, "amount": money("15.00", "USD")},
    )
    deposit_id = deposit["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == deposit_id)
    created = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code, "payment_source": "balance"},
    )
    assert created["ok"], created
    sub_id = created["data"]["subscription"]["id"]
    paid = (await bus.event("invoice.paid", lambda d: d["subscription_id"] == sub_id))["data"]
    assert (paid["subtotal"], paid["tax"], paid["total"]) == (
        money("10.00", "USD"), money("2.00", "USD"), money("12.00", "USD"),
    )  # fmt: skip
    balance = await bus.call("billing.wallet.balance", {"user_id": user, "currency": "USD"})
    assert balance["data"]["accounts"][0]["balance"] == money("3.00", "USD")
    assert await findings(worker) == {}
