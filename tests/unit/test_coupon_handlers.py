"""Coupons on the fake unit of work: the admin-only upsert (terms immutable, name and
active changeable), the coupon on invoice.create (discount before tax, refusals that
write nothing) and the access policy (exact name only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts import names
from billing_contracts.coupons import CouponOut, ListCoupons, UpsertCoupon
from billing_contracts.invoices import CreateInvoice
from billing_contracts.taxes import UpsertTaxRate
from billing_worker.access import PRIVILEGED, Access, AccessPolicy, load_policy
from billing_worker.domain.errors import CurrencyMismatch, InvalidState, NotFound
from billing_worker.handlers import coupons, invoices, taxes
from billing_worker.handlers.deps import Deps
from billing_worker.messaging.routes import COMMANDS, QUERIES
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from support.fake_uow import FakeDatabase
from support.handler_kit import key, make_deps, money, new_user, run, wire

UPSERT = names.COUPON_UPSERT
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def deps() -> Deps:
    return make_deps()


def a_coupon(code: str, **terms: Any) -> UpsertCoupon:
    fields = {"name": code.upper(), "duration": "once", **terms}
    if "percent_off" not in fields and "amount_off" not in fields:
        fields["percent_off"] = "10"
    return UpsertCoupon.model_validate({"idempotency_key": key(), "code": code, **fields})


def line(price: str, tax_rate: str | None = None, currency: str = "USD") -> dict[str, Any]:
    taxed = {"tax_rate": tax_rate} if tax_rate else {}
    return {"description": "item", "quantity": 1, "unit_price": money(price, currency), **taxed}


def an_invoice(user: str, coupon: str, *lines: dict[str, Any], currency: str = "USD") -> Any:
    return CreateInvoice.model_validate(
        {"idempotency_key": key(), "user_id": user, "currency": currency, "lines": list(lines),
         "coupon": coupon}
    )  # fmt: skip


async def test_a_coupon_is_created_renamed_deactivated_and_listed(
    db: FakeDatabase, deps: Deps
) -> None:
    out = await run(db, coupons.upsert_coupon, a_coupon("TEN", percent_off="10.5"), deps)
    assert out == CouponOut(
        code="TEN", name="TEN", percent_off="10.5", duration="once", active=True
    )
    renamed = a_coupon("TEN", percent_off="10.5", name="Ten off", active=False)
    await run(db, coupons.upsert_coupon, renamed, deps)
    fixed = a_coupon("FIVE", amount_off="5.00", currency="USD", duration="repeating",
                     duration_in_periods=3)  # fmt: skip
    await run(db, coupons.upsert_coupon, fixed, deps)
    listed = await run(db, coupons.list_coupons, ListCoupons(), deps)
    assert [(c.code, c.name, c.active, c.amount_off) for c in listed.coupons] == [
        ("FIVE", "FIVE", True, wire("5.00")),
        ("TEN", "Ten off", False, None),
    ]


@pytest.mark.parametrize(
    "changed",
    [
        {"percent_off": "11"},
        {"amount_off": "1.00", "currency": "USD"},
        {"percent_off": "10", "duration": "forever"},
        {"percent_off": "10", "duration": "repeating", "duration_in_periods": 2},
        {"percent_off": "10", "stripe_coupon_id": "co_x"},
    ],
)
async def test_other_terms_for_an_existing_code_are_invalid_state(
    db: FakeDatabase, deps: Deps, changed: dict[str, Any]
) -> None:
    await run(db, coupons.upsert_coupon, a_coupon("C", percent_off="10"), deps)
    with pytest.raises(InvalidState, match="use a new code"):
        await run(db, coupons.upsert_coupon, a_coupon("C", **changed), deps)
    assert db.state.coupons["C"].percent_off == 10
    assert db.state.coupons["C"].duration == "once"


@pytest.mark.parametrize(
    "fields",
    [
        {},  # neither percent_off nor amount_off
        {"percent_off": "10", "amount_off": "1.00", "currency": "USD"},
        {"percent_off": "0"},
        {"percent_off": "100.01"},
        {"percent_off": "5.12345"},
        {"percent_off": 10},  # a number, never a float
        {"amount_off": "1.00"},  # no currency
        {"percent_off": "10", "currency": "USD"},
        {"amount_off": "0", "currency": "USD"},
        {"percent_off": "10", "duration": "repeating"},  # no duration_in_periods
        {"percent_off": "10", "duration": "repeating", "duration_in_periods": 1001},
        {"percent_off": "10", "duration": "once", "duration_in_periods": 2},
        {"percent_off": "10", "duration": "weekly"},
    ],
)
def test_bad_terms_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError
        UpsertCoupon.model_validate(
            {"idempotency_key": "k", "code": "C", "name": "C", "duration": "once", **fields}
        )


async def test_an_amount_off_finer_than_the_currency_is_invalid(
    db: FakeDatabase, deps: Deps
) -> None:
    with pytest.raises(Exception, match="fraction digits"):
        await run(db, coupons.upsert_coupon, a_coupon("J", amount_off="1.5", currency="JPY"), deps)
    assert db.state.coupons == {}


async def test_a_coupon_on_invoice_create_discounts_before_tax_and_the_event_says_so(
    db: FakeDatabase, deps: Deps
) -> None:
    vat = UpsertTaxRate(
        idempotency_key=key(), code="vat20", name="VAT", percent="20", inclusive=False
    )
    await run(db, taxes.upsert_tax_rate, vat, deps)
    await run(db, coupons.upsert_coupon, a_coupon("OFF3", amount_off="3.00", currency="USD"), deps)
    out = await run(
        db, invoices.create_invoice,
        an_invoice(new_user(), "OFF3", line("10.00", "vat20"), line("20.00")), deps,
    )  # fmt: skip
    # 3.00 spread 10:20 -> 1.00 / 2.00; tax 20 % of 9.00 = 1.80
    assert [(ln.discount, ln.tax) for ln in out.lines] == [
        (wire("1.00"), wire("1.80")),
        (wire("2.00"), wire("0.00")),
    ]
    assert (out.subtotal, out.discount, out.tax, out.total) == (
        wire("30.00"), wire("3.00"), wire("1.80"), wire("28.80"),
    )  # fmt: skip
    assert [(d.coupon, d.amount_off, d.amount) for d in out.discounts] == [
        ("OFF3", wire("3.00"), wire("3.00"))
    ]
    [event] = db.events_of(ev.INVOICE_CREATED)
    assert (event["discount"], event["total"]) == (money("3.00"), money("28.80"))
    assert event["discounts"][0]["coupon"] == "OFF3"


@pytest.mark.parametrize(
    ("code", "error"),
    [("NOPE", NotFound), ("OLD", InvalidState), ("EUR5", CurrencyMismatch)],
)
async def test_a_refused_coupon_writes_nothing(
    db: FakeDatabase, deps: Deps, code: str, error: type[Exception]
) -> None:
    await run(db, coupons.upsert_coupon, a_coupon("OLD", active=False), deps)
    await run(db, coupons.upsert_coupon, a_coupon("EUR5", amount_off="5", currency="EUR"), deps)
    with pytest.raises(error):
        await run(db, invoices.create_invoice, an_invoice(new_user(), code, line("9.00")), deps)
    assert db.state.invoices == {}
    assert db.state.numbers == {}
    assert db.events_of(ev.INVOICE_CREATED) == []


def test_the_coupon_queues_are_routed() -> None:
    assert COMMANDS[UPSERT] is coupons.upsert_coupon
    assert QUERIES[names.COUPON_LIST] is coupons.list_coupons


def test_the_upsert_is_admin_only_even_under_a_wildcard() -> None:
    assert UPSERT in PRIVILEGED
    policy = AccessPolicy({"ops": ("billing.coupon.*",), "root": ("*",), "admin": (UPSERT,)})
    assert policy.allows("ops", names.COUPON_LIST)
    assert not policy.allows("ops", UPSERT)
    assert not policy.allows("root", UPSERT)
    assert policy.allows("admin", UPSERT)
    access = Access("worker", policy)
    assert access.refusal(UPSERT, "root", {}) is not None
    assert access.refusal(UPSERT, "worker", {}) is not None  # not even the worker's own user
    assert access.refusal(UPSERT, "admin", {}) is None
    assert Access("guest").refusal(UPSERT, "guest", {}) is not None
    assert Access("guest", privileged_without_policy=True).refusal(UPSERT, "guest", {}) is None


def test_the_deploy_policy_lets_only_the_admin_set_coupons() -> None:
    queues = (*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE)
    policy = load_policy(ROOT / "deploy" / "access-policy.toml", queues)
    assert {user for user in policy.users if policy.allows(user, UPSERT)} == {"billing-admin"}
    assert policy.allows("storefront", names.COUPON_LIST)


async def test_a_concurrent_first_creation_with_other_terms_is_refused(
    db: FakeDatabase, deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row lock finds no coupon yet; the insert then meets the one another command
    # committed meanwhile (ON CONFLICT keeps its terms): ours are refused, not reported.
    await run(db, coupons.upsert_coupon, a_coupon("RACE", percent_off="10"), deps)

    async def not_yet(self: Any, code: str, *, lock: bool = False) -> None:
        return None

    monkeypatch.setattr("support.fake_coupons.FakeCoupons.by_code", not_yet)
    with pytest.raises(InvalidState, match="use a new code"):
        await run(db, coupons.upsert_coupon, a_coupon("RACE", percent_off="20"), deps)
    assert db.state.coupons["RACE"].percent_off == 10
