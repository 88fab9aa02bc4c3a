"""The YooKassa receipt builder (54-FZ): exact amounts from minor units, items that add up
to the payment, the codes of the policy, the plan or the line."""

from __future__ import annotations

import hashlib
import json
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from billing_contracts.plans import UpsertPlan
from billing_contracts.wallet import Deposit
from billing_worker.domain.money import format_minor
from billing_worker.providers.yookassa.receipts import (
    PAYMENT_MODES,
    PAYMENT_SUBJECTS,
    Contact,
    Line,
    ReceiptPolicy,
    deposit_receipt,
    invoice_receipt,
    receipt_policy,
    refund_receipt,
    subscription_receipt,
    total_minor,
)
from billing_worker.replies import request_hash
from billing_worker.settings import PaymentMode, PaymentSubject
from support.settings import make_settings

POLICY = ReceiptPolicy(vat_code=4, payment_subject="service", payment_mode="full_payment",
                       deposit_description="Balance top-up")  # fmt: skip
ADA = Contact(email="ada@example.com")


def test_a_deposit_receipt_is_one_item_of_the_whole_amount_as_an_exact_string() -> None:
    assert deposit_receipt(ADA, 150050, "RUB", POLICY) == {
        "customer": {"email": "ada@example.com"},
        "items": [
            {
                "description": "Balance top-up",
                "quantity": "1.00",
                "amount": {"value": "1500.50", "currency": "RUB"},
                "vat_code": 4,
                "payment_subject": "service",
                "payment_mode": "full_payment",
            }
        ],
    }


def test_a_phone_is_the_contact_when_there_is_no_email() -> None:
    made = deposit_receipt(Contact(phone="79001234567"), 100, "RUB", POLICY)
    assert made["customer"] == {"phone": "79001234567"}
    with pytest.raises(ValueError, match="e-mail or phone"):
        deposit_receipt(Contact(), 100, "RUB", POLICY)


def test_a_subscription_receipt_names_the_plan_and_takes_its_vat_code_else_the_policys() -> None:
    [item] = subscription_receipt(ADA, "Pro", 49900, "RUB", 2, POLICY)["items"]
    assert (item["description"], item["amount"]["value"], item["vat_code"]) == ("Pro", "499.00", 2)
    [item] = subscription_receipt(ADA, "Pro", 49900, "RUB", None, POLICY)["items"]
    assert item["vat_code"] == 4


def test_a_subscription_of_n_seats_is_one_item_of_quantity_n_at_the_unit_price() -> None:
    """Not N items, nor one item of N x price at quantity 1 (54-FZ: what was sold, how many)."""
    made = subscription_receipt(ADA, "Pro", 3 * 49900, "RUB", 2, POLICY, quantity=3)
    items = [(i["description"], i["quantity"], i["amount"]["value"], i["vat_code"])
             for i in made["items"]]  # fmt: skip
    assert items == [("Pro", "3.00", "499.00", 2)]
    assert total_minor(made, "RUB") == 3 * 49900


@given(
    quantity=st.integers(1, 10_000),
    unit=st.integers(0, 10**9),
    extra=st.integers(0, 10**6),
)
def test_a_seat_charge_that_does_not_divide_by_the_seats_still_adds_up_exactly(
    quantity: int, unit: int, extra: int
) -> None:
    """An exclusive tax is rounded on the line (price x seats), so the charge need not be a
    multiple of the seats: the seats are then split between two unit prices one kopeck
    apart, every seat still counted once and the items adding up to the charge."""
    amount = quantity * unit + extra % quantity
    made = subscription_receipt(ADA, "Pro", amount, "RUB", None, POLICY, quantity=quantity)
    assert total_minor(made, "RUB") == amount
    assert sum(int(i["quantity"].split(".")[0]) for i in made["items"]) == quantity
    assert len(made["items"]) == (1 if amount % quantity == 0 else 2)
    assert made["items"][0]["amount"]["value"] == format_minor(amount // quantity, "RUB")


def test_an_invoice_receipt_has_one_item_per_line_adding_up_to_the_total() -> None:
    lines = [Line("Seat", 3, 33333, vat_code=1), Line("Setup", 1, 1)]
    made = invoice_receipt(ADA, lines, "RUB", POLICY)
    items = [(i["description"], i["quantity"], i["amount"]["value"], i["vat_code"])
             for i in made["items"]]  # fmt: skip
    assert items == [("Seat", "3.00", "333.33", 1), ("Setup", "1.00", "0.01", 4)]
    assert total_minor(made, "RUB") == 3 * 33333 + 1


def test_descriptions_are_cut_to_yookassas_128_characters() -> None:
    [item] = subscription_receipt(ADA, "x" * 300, 100, "RUB", None, POLICY)["items"]
    assert len(item["description"]) == 128


def test_a_full_refund_gives_back_the_payments_items_as_they_were() -> None:
    paid = invoice_receipt(ADA, [Line("Seat", 3, 333), Line("Setup", 1, 1)], "RUB", POLICY)
    assert refund_receipt(paid, 1000, "RUB") == paid


def test_a_partial_refund_shares_the_amount_over_the_items_exactly() -> None:
    paid = invoice_receipt(ADA, [Line("Seat", 3, 333), Line("Setup", 1, 1)], "RUB", POLICY)
    refund = refund_receipt(paid, 999, "RUB")
    assert refund["customer"] == {"email": "ada@example.com"}
    assert [(i["description"], i["quantity"], i["amount"]["value"]) for i in refund["items"]] == [
        ("Seat", "1.00", "9.98"), ("Setup", "1.00", "0.01"),
    ]  # fmt: skip
    assert [i["vat_code"] for i in refund["items"]] == [4, 4]


def test_a_refund_larger_than_the_payment_or_of_nothing_is_refused() -> None:
    paid = deposit_receipt(ADA, 100, "RUB", POLICY)
    for wrong in (0, -1, 101):
        with pytest.raises(ValueError, match="does not fit"):
            refund_receipt(paid, wrong, "RUB")


@given(
    units=st.lists(st.tuples(st.integers(1, 50), st.integers(0, 10**7)), min_size=1, max_size=8),
    data=st.data(),
)
def test_every_refund_receipt_adds_up_to_the_refund(
    units: list[tuple[int, int]], data: st.DataObject
) -> None:
    lines = [Line(f"item {n}", quantity, price) for n, (quantity, price) in enumerate(units)]
    paid = invoice_receipt(ADA, lines, "RUB", POLICY)
    total = total_minor(paid, "RUB")
    if total == 0:
        return
    refund = data.draw(st.integers(1, total))
    made = refund_receipt(paid, refund, "RUB")
    assert total_minor(made, "RUB") == refund
    assert all(i["amount"]["value"] != "0.00" for i in made["items"])


def test_currencies_keep_their_own_fraction_digits() -> None:
    [item] = deposit_receipt(ADA, 1500, "JPY", POLICY)["items"]
    assert item["amount"] == {"value": "1500", "currency": "JPY"}


def test_the_policy_is_off_unless_asked_for_and_takes_the_settings() -> None:
    base = ("postgresql+asyncpg://x@127.0.0.1/x", "amqp://guest:guest@127.0.0.1:5672/")
    assert receipt_policy(make_settings(*base)) is None
    on = make_settings(*base, yookassa_receipts=True, yookassa_vat_code=6,
                       yookassa_payment_subject="commodity", yookassa_payment_mode="advance",
                       yookassa_deposit_description="Пополнение баланса")  # fmt: skip
    assert receipt_policy(on) == ReceiptPolicy(6, "commodity", "advance", "Пополнение баланса")


def test_the_settings_offer_exactly_yookassas_subjects_and_modes() -> None:
    assert get_args(PaymentSubject) == PAYMENT_SUBJECTS
    assert get_args(PaymentMode) == PAYMENT_MODES


@pytest.mark.parametrize(
    ("name", "value"),
    [("yookassa_vat_code", 0), ("yookassa_vat_code", 13), ("yookassa_payment_mode", "cash"),
     ("yookassa_payment_subject", "goods"), ("yookassa_deposit_description", "")],
)  # fmt: skip
def test_bad_receipt_settings_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        make_settings("postgresql+asyncpg://x@127.0.0.1/x", "amqp://g:g@127.0.0.1:5672/",
                      **{name: value})  # fmt: skip


DEPOSIT = {"idempotency_key": "k", "user_id": "u", "amount": {"amount": "1.00", "currency": "RUB"}}
PLAN = {"idempotency_key": "k", "code": "c", "name": "n", "interval": "month",
        "price": {"amount": "1.00", "currency": "RUB"}}  # fmt: skip


def test_commands_without_the_receipt_fields_hash_as_before_they_existed() -> None:
    """Absent, they are left out of the request hash: a command stored before this release
    and retried after it still matches its idempotency record."""
    assert request_hash(Deposit.model_validate(DEPOSIT)) == _hash_of(DEPOSIT, Deposit)
    assert request_hash(UpsertPlan.model_validate(PLAN)) == _hash_of(PLAN, UpsertPlan)
    with_email = Deposit.model_validate({**DEPOSIT, "customer_email": "a@b.example"})
    assert "customer_email" in with_email.model_dump_json()


def _hash_of(body: dict[str, object], model: type[Deposit] | type[UpsertPlan]) -> str:
    """The hash as the models without the receipt fields made it."""
    new = {"customer_email", "customer_phone", "vat_code"}
    dumped = model.model_validate(body).model_dump(mode="json", exclude={"idempotency_key"})
    assert not new & set(dumped)
    fields = [name for name in model.model_fields if name not in new | {"idempotency_key"}]
    as_before = json.dumps({name: dumped[name] for name in fields}, separators=(",", ":"))
    return hashlib.sha256(as_before.encode()).hexdigest()


@pytest.mark.parametrize(
    "extra",
    [{"customer_email": "not-an-email"}, {"customer_phone": "+79001234567"},
     {"customer_phone": "123"}, {"customer_phone": 79001234567}],
)  # fmt: skip
def test_a_bad_contact_is_refused_by_the_schema(extra: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Deposit.model_validate({**DEPOSIT, **extra})


@pytest.mark.parametrize("vat_code", [0, 13, "1", 1.0, True])
def test_a_plans_vat_code_is_a_whole_number_from_1_to_12(vat_code: object) -> None:
    with pytest.raises(ValidationError):
        UpsertPlan.model_validate({**PLAN, "vat_code": vat_code})
    assert UpsertPlan.model_validate({**PLAN, "vat_code": 12}).vat_code == 12
