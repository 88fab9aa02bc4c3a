"""How the YooKassa fake checks a `receipt` (54-FZ), as the real API does for a shop with
fiscalization on: 400 `invalid_request` with `parameter` naming what is wrong.

* A shop that requires receipts refuses a payment or refund without one
  (`parameter: "receipt"`).
* `customer` needs an `email` or a `phone` (`receipt.customer`).
* 1-100 `items`, each with a `description` (1-128 chars), a positive decimal `quantity`,
  an `amount` (the price of one unit, a string with 2 fraction digits, in the payment's
  currency), a `vat_code` 1-12, and, when given, a known `payment_subject` and
  `payment_mode`.
* The items (amount x quantity) must add up to the payment's or refund's amount exactly
  (`receipt.items`), as YooKassa refuses such a receipt.

A shop that does not require receipts still checks one it is given.
"""

from __future__ import annotations

import copy
from decimal import Decimal, InvalidOperation
from typing import Any

Json = dict[str, Any]

SUBJECTS = {
    "commodity", "excise", "job", "service", "gambling_bet", "gambling_prize", "lottery",
    "lottery_prize", "intellectual_activity", "payment", "agent_commission", "composite",
    "another",
}  # fmt: skip
MODES = {
    "full_prepayment", "partial_prepayment", "advance", "full_payment", "partial_payment",
    "credit", "credit_payment",
}  # fmt: skip


class InvalidReceipt(ValueError):
    def __init__(self, description: str, parameter: str = "receipt") -> None:
        super().__init__(description)
        self.description = description
        self.parameter = parameter


def check_receipt(raw: Any, amount: Json, required: bool) -> Json | None:
    """The receipt to keep, None when there is none (and none is required)."""
    if raw is None:
        if required:
            raise InvalidReceipt("Receipt is missing or illegal: the shop sends receipts (54-FZ)")
        return None
    if not isinstance(raw, dict):
        raise InvalidReceipt("Receipt must be an object")
    customer = raw.get("customer")
    if not isinstance(customer, dict) or not (customer.get("email") or customer.get("phone")):
        raise InvalidReceipt("Receipt needs customer.email or customer.phone", "receipt.customer")
    items = raw.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        raise InvalidReceipt("Receipt needs 1 to 100 items", "receipt.items")
    total = sum((_item_total(item, amount["currency"]) for item in items), Decimal(0))
    if total != Decimal(amount["value"]):
        raise InvalidReceipt(
            f"The sum of the receipt's items ({total}) is not the amount ({amount['value']})",
            "receipt.items",
        )
    return copy.deepcopy(raw)


def _item_total(item: Any, currency: str) -> Decimal:
    if not isinstance(item, dict):
        raise InvalidReceipt("A receipt item must be an object", "receipt.items")
    description = item.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= 128:
        raise InvalidReceipt("Item description of 1-128 chars", "receipt.items.description")
    quantity = _decimal(item.get("quantity"), "receipt.items.quantity")
    if quantity <= 0:
        raise InvalidReceipt("Item quantity must be positive", "receipt.items.quantity")
    price = item.get("amount")
    value = price.get("value") if isinstance(price, dict) else None
    if not isinstance(value, str) or "." not in value or len(value.split(".")[1]) != 2:
        raise InvalidReceipt("Item amount.value: a string with 2 fraction digits",
                             "receipt.items.amount.value")  # fmt: skip
    if price.get("currency") != currency:
        raise InvalidReceipt("Item currency differs from the amount's",
                             "receipt.items.amount.currency")  # fmt: skip
    vat_code = item.get("vat_code")
    if isinstance(vat_code, bool) or not isinstance(vat_code, int) or not 1 <= vat_code <= 12:
        raise InvalidReceipt("Item vat_code must be 1-12", "receipt.items.vat_code")
    if item.get("payment_subject", "service") not in SUBJECTS:
        raise InvalidReceipt("Unknown payment_subject", "receipt.items.payment_subject")
    if item.get("payment_mode", "full_payment") not in MODES:
        raise InvalidReceipt("Unknown payment_mode", "receipt.items.payment_mode")
    return _decimal(value, "receipt.items.amount.value") * quantity


def _decimal(raw: Any, parameter: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidReceipt(f"{parameter} must be a decimal string", parameter)
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise InvalidReceipt(f"{parameter} is not a number", parameter) from None
