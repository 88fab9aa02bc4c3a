"""Tax rates on the fake unit of work: the admin-only upsert, invoice lines taxed at a
rate by its code (an unknown code is `not_found` and writes nothing), and an issued
invoice keeping the rate it was issued with when the rate changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts import names
from billing_contracts.invoices import CreateInvoice
from billing_contracts.taxes import ListTaxRates, TaxRateOut, UpsertTaxRate
from billing_worker.access import PRIVILEGED, Access, AccessPolicy, load_policy
from billing_worker.domain.errors import NotFound
from billing_worker.handlers import invoices, taxes
from billing_worker.handlers.deps import Deps
from billing_worker.messaging.routes import COMMANDS, QUERIES
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from support.fake_uow import FakeDatabase
from support.handler_kit import key, make_deps, money, new_user, run, wire

UPSERT = names.TAX_RATE_UPSERT
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def deps() -> Deps:
    return make_deps()


def a_rate(code: str, percent: str, inclusive: bool = False) -> UpsertTaxRate:
    return UpsertTaxRate(
        idempotency_key=key(), code=code, name=code.upper(), percent=percent, inclusive=inclusive
    )


def line(price: str, tax_rate: str | None = None, quantity: int = 1) -> dict[str, Any]:
    taxed = {"tax_rate": tax_rate} if tax_rate else {}
    return {"description": "item", "quantity": quantity, "unit_price": money(price), **taxed}


def an_invoice(user: str, *lines: dict[str, Any]) -> CreateInvoice:
    return CreateInvoice.model_validate(
        {"idempotency_key": key(), "user_id": user, "currency": "USD", "lines": list(lines)}
    )


async def test_a_rate_is_created_then_changed_in_place_and_listed(
    db: FakeDatabase, deps: Deps
) -> None:
    out = await run(db, taxes.upsert_tax_rate, a_rate("vat", "19.5"), deps)
    assert out == TaxRateOut(code="vat", name="VAT", percent="19.5", inclusive=False)
    await run(db, taxes.upsert_tax_rate, a_rate("vat", "7", inclusive=True), deps)
    await run(db, taxes.upsert_tax_rate, a_rate("gst", "10"), deps)
    listed = await run(db, taxes.list_tax_rates, ListTaxRates(), deps)
    assert [(r.code, r.percent, r.inclusive) for r in listed.tax_rates] == [
        ("gst", "10", False),
        ("vat", "7", True),
    ]


@pytest.mark.parametrize("percent", ["100", "-1", "19.12345", "1e1", "019", " 19", "NaN"])
def test_a_percent_outside_0_to_100_or_past_4_places_is_invalid(percent: str) -> None:
    with pytest.raises(ValueError, match="percent"):
        UpsertTaxRate.model_validate(
            {"idempotency_key": "k", "code": "vat", "name": "VAT", "percent": percent,
             "inclusive": False}
        )  # fmt: skip


def test_a_percent_must_be_a_string_never_a_float() -> None:
    with pytest.raises(ValueError, match="percent"):
        UpsertTaxRate.model_validate(
            {"idempotency_key": "k", "code": "vat", "name": "VAT", "percent": 19.5,
             "inclusive": False}
        )  # fmt: skip


async def test_taxed_lines_make_subtotal_tax_and_total_and_the_event_carries_them(
    db: FakeDatabase, deps: Deps
) -> None:
    await run(db, taxes.upsert_tax_rate, a_rate("vat19", "19"), deps)
    await run(db, taxes.upsert_tax_rate, a_rate("vat20-in", "20", inclusive=True), deps)
    command = an_invoice(
        new_user(), line("1.50", "vat19", quantity=3), line("10.00", "vat20-in"), line("5.00")
    )
    out = await run(db, invoices.create_invoice, command, deps)
    # 4.50 + 19 % = 0.855 -> 0.86; 10.00 holds 20 %: 1.6667 -> 1.67, net 8.33; 5.00 untaxed
    assert [(ln.amount, ln.tax) for ln in out.lines] == [
        (wire("4.50"), wire("0.86")),
        (wire("10.00"), wire("1.67")),
        (wire("5.00"), wire("0.00")),
    ]
    assert [(ln.tax_rate, ln.tax_percent, ln.tax_inclusive) for ln in out.lines] == [
        ("vat19", "19", False),
        ("vat20-in", "20", True),
        (None, None, None),
    ]
    assert (out.subtotal, out.tax, out.total) == (wire("17.83"), wire("2.53"), wire("20.36"))
    [event] = db.events_of(ev.INVOICE_CREATED)
    assert (event["subtotal"], event["tax"], event["total"]) == (
        money("17.83"),
        money("2.53"),
        money("20.36"),
    )
    assert [ln["tax"] for ln in event["lines"]] == [money("0.86"), money("1.67"), money("0.00")]


async def test_an_unknown_rate_is_not_found_and_issues_nothing(
    db: FakeDatabase, deps: Deps
) -> None:
    await run(db, taxes.upsert_tax_rate, a_rate("vat", "19"), deps)
    command = an_invoice(new_user(), line("1.00", "vat"), line("2.00", "no-such-rate"))
    with pytest.raises(NotFound, match="no-such-rate") as refused:
        await run(db, invoices.create_invoice, command, deps)
    assert refused.value.details == {"tax_rate": "no-such-rate"}
    assert db.state.invoices == {}
    assert db.state.numbers == {}
    assert db.events_of(ev.INVOICE_CREATED) == []


async def test_changing_a_rate_leaves_issued_invoices_as_they_were(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await run(db, taxes.upsert_tax_rate, a_rate("vat", "19"), deps)
    before = await run(db, invoices.create_invoice, an_invoice(user, line("100.00", "vat")), deps)
    await run(db, taxes.upsert_tax_rate, a_rate("vat", "25", inclusive=True), deps)
    after = await run(db, invoices.create_invoice, an_invoice(user, line("100.00", "vat")), deps)
    stored = db.state.invoices[before.id]
    assert (stored.tax_minor, stored.total_minor) == (1900, 11900)
    assert stored.lines[0].tax_percent == 19
    assert (after.tax, after.total, after.lines[0].tax_percent) == (
        wire("20.00"),
        wire("100.00"),
        "25",
    )


def test_the_tax_rate_queues_are_routed() -> None:
    assert COMMANDS[UPSERT] is taxes.upsert_tax_rate
    assert QUERIES[names.TAX_RATE_LIST] is taxes.list_tax_rates


def test_the_upsert_is_admin_only_even_under_a_wildcard() -> None:
    assert UPSERT in PRIVILEGED
    policy = AccessPolicy({"ops": ("billing.tax-rate.*",), "root": ("*",), "admin": (UPSERT,)})
    assert policy.allows("ops", names.TAX_RATE_LIST)  # reading the rates is not privileged
    assert not policy.allows("ops", UPSERT)
    assert not policy.allows("root", UPSERT)
    assert policy.allows("admin", UPSERT)
    access = Access("worker", policy)
    assert access.refusal(UPSERT, "root", {}) == f"broker user 'root' may not send to {UPSERT}"
    assert access.refusal(UPSERT, "worker", {}) is not None  # not even the worker's own user
    assert access.refusal(UPSERT, "admin", {}) is None


def test_without_a_policy_nobody_sets_rates_unless_development_opens_it() -> None:
    assert Access("guest").refusal(UPSERT, "guest", {}) is not None
    assert Access("guest").refusal(names.TAX_RATE_LIST, "guest", {}) is None
    assert Access("guest", privileged_without_policy=True).refusal(UPSERT, "guest", {}) is None


def test_the_deploy_policy_lets_only_the_admin_set_rates() -> None:
    queues = (*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE)
    policy = load_policy(ROOT / "deploy" / "access-policy.toml", queues)
    assert {user for user in policy.users if policy.allows(user, UPSERT)} == {"billing-admin"}
    assert policy.allows("storefront", names.TAX_RATE_LIST)
