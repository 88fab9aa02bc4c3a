"""The YooKassa fake's receipt checks (54-FZ), through the real SDK's ApiClient."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from yookassa import Configuration
from yookassa.client import ApiClient
from yookassa.domain.exceptions import BadRequestError

from fakes.server import serve
from fakes.yookassa_api import FakeYooKassa


@pytest.fixture
def fake() -> FakeYooKassa:
    shop = FakeYooKassa()
    shop.requires_receipts = True
    return shop


@pytest.fixture
def base_url(fake: FakeYooKassa) -> Iterator[str]:
    names = ("account_id", "secret_key", "auth_token", "api_url", "timeout", "max_attempts")
    saved = {name: getattr(Configuration, name) for name in names}
    with serve(fake.app) as base:
        Configuration.configure(fake.account_id, fake.secret_key, api_url=f"{base}/v3")
        try:
            yield base
        finally:
            for name, value in saved.items():
                setattr(Configuration, name, value)


def item(value: str, quantity: str = "1.00", **extra: Any) -> dict[str, Any]:
    return {"description": "Top-up", "quantity": quantity,
            "amount": {"value": value, "currency": "RUB"}, "vat_code": 1,
            "payment_subject": "service", "payment_mode": "full_payment", **extra}  # fmt: skip


def payment(receipt: Any = None, value: str = "100.00") -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": {"value": value, "currency": "RUB"}, "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://shop.example/back"},
    }  # fmt: skip
    if receipt is not None:
        body["receipt"] = receipt
    return body


def post(path: str, body: Any) -> dict[str, Any]:
    headers = {"Idempotence-Key": uuid.uuid4().hex}
    return ApiClient().request("POST", path, None, headers, body)  # type: ignore[no-any-return]


def refused(path: str, body: Any) -> dict[str, Any]:
    with pytest.raises(BadRequestError) as error:
        post(path, body)
    return error.value.args[0]  # type: ignore[no-any-return]


def test_a_shop_that_requires_receipts_refuses_a_payment_without_one(
    fake: FakeYooKassa, base_url: str
) -> None:
    answer = refused("/payments", payment())
    assert (answer["code"], answer["parameter"]) == ("invalid_request", "receipt")
    assert fake.payments == {}


@pytest.mark.parametrize(
    ("receipt", "parameter"),
    [
        ({"customer": {}, "items": [item("100.00")]}, "receipt.customer"),
        ({"customer": {"email": "a@b.c"}, "items": []}, "receipt.items"),
        ({"customer": {"email": "a@b.c"}, "items": [item("99.99")]}, "receipt.items"),
        ({"customer": {"email": "a@b.c"}, "items": [item("50.00"), item("50.01")]},
         "receipt.items"),
        ({"customer": {"email": "a@b.c"}, "items": [item("100", )]}, "receipt.items.amount.value"),
        ({"customer": {"email": "a@b.c"}, "items": [item("100.00", vat_code=13)]},
         "receipt.items.vat_code"),
        ({"customer": {"email": "a@b.c"}, "items": [item("100.00", payment_mode="cash")]},
         "receipt.items.payment_mode"),
        ({"customer": {"email": "a@b.c"}, "items": [item("100.00", quantity="0")]},
         "receipt.items.quantity"),
    ],
)  # fmt: skip
def test_an_invalid_receipt_is_refused_naming_what_is_wrong(
    fake: FakeYooKassa, base_url: str, receipt: dict[str, Any], parameter: str
) -> None:
    answer = refused("/payments", payment(receipt))
    assert answer["parameter"] == parameter
    assert fake.payments == {}


def test_items_times_quantities_that_add_up_are_accepted_and_kept(
    fake: FakeYooKassa, base_url: str
) -> None:
    receipt = {"customer": {"phone": "79001234567"},
               "items": [item("33.33", "3.00"), item("0.01")]}  # fmt: skip
    made = post("/payments", payment(receipt))
    assert fake.receipts[made["id"]] == receipt
    assert made["receipt_registration"] == "pending"


def test_a_refund_needs_a_receipt_of_its_own_amount(fake: FakeYooKassa, base_url: str) -> None:
    paid = post("/payments", payment({"customer": {"email": "a@b.c"}, "items": [item("100.00")]}))
    fake.pay(paid["id"])
    bare = {"payment_id": paid["id"], "amount": {"value": "40.00", "currency": "RUB"}}
    assert refused("/refunds", bare)["parameter"] == "receipt"
    wrong = {**bare, "receipt": {"customer": {"email": "a@b.c"}, "items": [item("100.00")]}}
    assert refused("/refunds", wrong)["parameter"] == "receipt.items"
    right = {**bare, "receipt": {"customer": {"email": "a@b.c"}, "items": [item("40.00")]}}
    refund = post("/refunds", right)
    assert fake.receipts[refund["id"]] == right["receipt"]
