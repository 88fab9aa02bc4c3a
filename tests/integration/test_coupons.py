"""Coupons on the real PostgreSQL and RabbitMQ, on a clock moved by hand: an admin sets
coupons (privileged: opened here as local development does); a repeating coupon for 3
periods discounts exactly the first 3 charged periods of a balance subscription and
stops; percent and amount coupons on invoice.create with taxed JPY/USD/KWD lines; the
refusals write nothing; the audit finds nothing wrong (and a tampered discount)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_contracts.client import BillingClient, InvalidState
from billing_worker.app import Worker, build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.domain.calendar import add_months
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from support.clock import ManualClock
from support.rpc import Bus
from support.settings import make_settings
from support.subscription_kit import balance, fund, key, plan, subscribe

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 31, 9, 30, tzinfo=UTC)


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """Its own database: the audit judges the whole of it, the scheduler renews all."""
    return fresh_database_url


@pytest.fixture
def settings(database_url: str, rabbitmq_url: str) -> Settings:
    # billing.coupon.upsert is privileged: open it as local development does
    return make_settings(database_url, rabbitmq_url, credit_without_policy=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def worker(settings: Settings, clock: ManualClock) -> AsyncIterator[Worker]:
    worker = build_worker(settings, clock=clock)
    async with worker.app:
        yield worker


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


async def findings(worker: Worker) -> dict[str, list[dict[str, Any]]]:
    async with driver_connection(worker.engine) as db:
        found = await audit(db)
    return {f.check: f.rows for f in found if "invoice" in f.check or "period" in f.check}


async def coupon(billing: BillingClient, code: str, **terms: Any) -> None:
    await billing.upsert_coupon(code=code, name=code, idempotency_key=key(), **terms)


async def test_a_repeating_coupon_discounts_exactly_three_charged_periods(
    bus: Bus, worker: Worker, clock: ManualClock, rabbitmq_url: str
) -> None:
    async with BillingClient(rabbitmq_url, timeout=30) as billing:  # sets the AMQP user_id
        await billing.upsert_tax_rate(
            code="vat10", name="VAT", percent="10", inclusive=False, idempotency_key=key()
        )
        await coupon(billing, "REP3", amount_off="2.50", currency="USD", duration="repeating",
                     duration_in_periods=3)  # fmt: skip
    user, code = f"cpn-{uuid.uuid4().hex[:8]}", await plan(bus, tax_rate="vat10")
    await fund(bus, user, "60.00")
    sub = await subscribe(bus, user, code, coupon="REP3")
    for months in (1, 2, 3, 4):
        clock.set(add_months(START, months))
        assert (await worker.renewals.run_once())["renewed"] == 1

    async with driver_connection(worker.engine) as db:
        rows = await db.fetch(
            "SELECT period_index, discount_minor, tax_minor, total_minor, coupon_code "
            "FROM invoices WHERE subscription_id = $1 ORDER BY period_index",
            uuid.UUID(sub["id"]),
        )
        used = await db.fetchval(
            "SELECT periods_used FROM coupon_redemptions WHERE subscription_id = $1",
            uuid.UUID(sub["id"]),
        )
    # 10.00 - 2.50 = 7.50, + 10 % = 8.25 for three periods; then 11.00
    assert [tuple(r) for r in rows] == [
        *((n, 250, 75, 825, "REP3") for n in range(3)),
        *((n, 0, 100, 1100, None) for n in (3, 4)),
    ]
    assert used == 3
    assert await balance(bus, user) == "13.25"  # 60.00 - 3 x 8.25 - 2 x 11.00
    paid = await bus.event("invoice.paid", lambda d: d["user_id"] == user, count=5)
    assert paid["data"]["discount"] is not None
    assert await findings(worker) == {}


async def test_invoice_coupons_on_taxed_lines_refusals_and_the_audit(
    bus: Bus, worker: Worker, rabbitmq_url: str
) -> None:
    user = f"cpn-{uuid.uuid4().hex[:8]}"
    async with BillingClient(rabbitmq_url, timeout=30) as billing:
        await billing.upsert_tax_rate(
            code="t10", name="T", percent="10", inclusive=False, idempotency_key=key()
        )
        await billing.upsert_tax_rate(
            code="t20in", name="T", percent="20", inclusive=True, idempotency_key=key()
        )
        await coupon(billing, "P15", percent_off="15", duration="once")
        await coupon(billing, "JPY100", amount_off="100", currency="JPY", duration="once")
        await coupon(billing, "KWD1", amount_off="1.000", currency="KWD", duration="forever")
        await coupon(billing, "GONE", percent_off="5", duration="once", active=False)
        with pytest.raises(InvalidState, match="use a new code"):
            await coupon(billing, "P15", percent_off="20", duration="once")
        listed = await billing.list_coupons()
    assert [c.code for c in listed.coupons] == ["GONE", "JPY100", "KWD1", "P15"]

    async def invoice(currency: str, coupon_code: str, *lines: tuple[str, str | None]) -> Any:
        return await bus.call("billing.invoice.create", {
            "idempotency_key": key(), "user_id": user, "currency": currency,
            "coupon": coupon_code,
            "lines": [{"description": "x", "quantity": 1, "unit_price": money(p, currency),
                       **({"tax_rate": t} if t else {})} for p, t in lines],
        })  # fmt: skip

    # USD, 15 % off: 4.55 -> 0.6825 -> 0.68, tax 10 % of 3.87 = 0.387 -> 0.39;
    # 12.00 holding 20 %: 1.80 off, 10.20 gross, tax 1.70
    usd = await invoice("USD", "P15", ("4.55", "t10"), ("12.00", "t20in"))
    data = usd["data"]
    assert [(ln["discount"], ln["tax"]) for ln in data["lines"]] == [
        (money("0.68"), money("0.39")),
        (money("1.80"), money("1.70")),
    ]
    assert (data["subtotal"], data["discount"], data["tax"], data["total"]) == (
        money("14.85"), money("2.48"), money("2.09"), money("14.46"),
    )  # fmt: skip
    assert data["discounts"] == [{"coupon": "P15", "percent_off": "15", "amount_off": None,
                                  "amount": money("2.48")}]  # fmt: skip
    # JPY, 100 off spread 300:700 -> 30 / 70; tax 10 % of 270 = 27
    jpy = (await invoice("JPY", "JPY100", ("300", "t10"), ("700", None)))["data"]
    assert [ln["discount"]["amount"] for ln in jpy["lines"]] == ["30", "70"]
    assert (jpy["tax"]["amount"], jpy["total"]["amount"]) == ("27", "927")
    # KWD, 1.000 off more than the 0.600 subtotal: capped, total 0
    kwd = (await invoice("KWD", "KWD1", ("0.600", "t10")))["data"]
    assert (kwd["discount"]["amount"], kwd["tax"]["amount"], kwd["total"]["amount"]) == (
        "0.600", "0.000", "0.000",
    )  # fmt: skip
    created = await bus.event("invoice.created", lambda d: d["invoice_id"] == data["id"])
    assert created["data"]["discount"] == money("2.48")

    refusals = [
        (await invoice("USD", "NOPE", ("1.00", None)))["error"]["code"],
        (await invoice("USD", "GONE", ("1.00", None)))["error"]["code"],
        (await invoice("USD", "JPY100", ("1.00", None)))["error"]["code"],
    ]
    assert refusals == ["not_found", "invalid_state", "currency_mismatch"]
    async with driver_connection(worker.engine) as db:
        assert await db.fetchval("SELECT count(*) FROM invoices WHERE user_id = $1", user) == 3
    assert await findings(worker) == {}

    async with driver_connection(worker.engine) as db:  # tamper with one line's share
        await db.execute(
            "UPDATE invoice_lines SET discount_minor = discount_minor - 1, "
            "tax_minor = tax_minor WHERE invoice_id = $1 AND position = 0",
            uuid.UUID(jpy["id"]),
        )
    found = await findings(worker)
    assert "invoice line whose discount is not its stored coupon's" in found
