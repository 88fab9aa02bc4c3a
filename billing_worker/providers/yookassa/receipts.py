"""YooKassa receipts (54-FZ): the `receipt` object of a payment or a refund.

Pure functions, integer minor units in, YooKassa's decimal strings out (never a float).
An item's `amount` is the price of ONE unit and `quantity` how many; YooKassa refuses a
receipt whose items (amount x quantity) do not add up to the payment's amount exactly,
so every builder here makes them add up by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billing_worker.domain.money import format_minor, parse_minor

if TYPE_CHECKING:
    from billing_worker.settings import Settings

PAYMENT_SUBJECTS = (
    "commodity", "excise", "job", "service", "gambling_bet", "gambling_prize", "lottery",
    "lottery_prize", "intellectual_activity", "payment", "agent_commission", "composite",
    "another",
)  # fmt: skip
PAYMENT_MODES = (
    "full_prepayment", "partial_prepayment", "advance", "full_payment", "partial_payment",
    "credit", "credit_payment",
)  # fmt: skip
MAX_DESCRIPTION = 128  # YooKassa's limit on an item's description


@dataclass(frozen=True, slots=True)
class ReceiptPolicy:
    """The shop's receipt settings (`BILLING_YOOKASSA_*`)."""

    vat_code: int = 1
    payment_subject: str = "service"
    payment_mode: str = "full_payment"
    deposit_description: str = "Balance top-up"


def receipt_policy(settings: Settings) -> ReceiptPolicy | None:
    """The policy `BILLING_YOOKASSA_RECEIPTS=true` asks for; None when receipts are off."""
    if not settings.yookassa_receipts:
        return None
    return ReceiptPolicy(
        vat_code=settings.yookassa_vat_code,
        payment_subject=settings.yookassa_payment_subject,
        payment_mode=settings.yookassa_payment_mode,
        deposit_description=settings.yookassa_deposit_description,
    )


@dataclass(frozen=True, slots=True)
class Contact:
    """Where YooKassa sends the receipt: an e-mail, or a phone (E.164 digits)."""

    email: str | None = None
    phone: str | None = None

    def customer(self) -> dict[str, str]:
        if self.email:
            return {"email": self.email}
        if self.phone:
            return {"phone": self.phone}
        raise ValueError("a receipt needs the customer's e-mail or phone")


@dataclass(frozen=True, slots=True)
class Line:
    """One thing sold: `quantity` units at `unit_minor` each."""

    description: str
    quantity: int
    unit_minor: int
    vat_code: int | None = None  # None: the policy's


def receipt(
    contact: Contact, lines: Sequence[Line], currency: str, policy: ReceiptPolicy
) -> dict[str, Any]:
    """The receipt of a payment of exactly the lines' total."""
    if not lines:
        raise ValueError("a receipt needs at least one item")
    items = []
    for line in lines:
        if line.quantity < 1 or line.unit_minor < 0:
            raise ValueError("an item needs a positive quantity and a price of at least 0")
        items.append(
            {
                "description": line.description[:MAX_DESCRIPTION],
                "quantity": _quantity(line.quantity),
                "amount": {"value": format_minor(line.unit_minor, currency), "currency": currency},
                "vat_code": line.vat_code or policy.vat_code,
                "payment_subject": policy.payment_subject,
                "payment_mode": policy.payment_mode,
            }
        )
    return {"customer": contact.customer(), "items": items}


def deposit_receipt(
    contact: Contact, amount_minor: int, currency: str, policy: ReceiptPolicy
) -> dict[str, Any]:
    """A top-up of the balance: one item of the whole amount."""
    return receipt(contact, [Line(policy.deposit_description, 1, amount_minor)], currency, policy)


def subscription_receipt(
    contact: Contact,
    plan_name: str,
    amount_minor: int,
    currency: str,
    vat_code: int | None,
    policy: ReceiptPolicy,
    quantity: int = 1,
) -> dict[str, Any]:
    """One period of a plan of `quantity` seats: one item named after the plan, with the
    plan's vat_code, of quantity `quantity` at the price of one seat (the charge / seats).

    A charge that is not a multiple of the seats (an exclusive tax is rounded on the whole
    line, price x seats) splits the seats between two items of the plan one minor unit
    apart: `quantity - r` at `amount // quantity` and `r` at one more, r = the remainder;
    every seat is counted once and the items add up to the charge exactly."""
    if quantity < 1:
        raise ValueError("a subscription has at least one seat")
    unit, rest = divmod(amount_minor, quantity)
    lines = [Line(plan_name, quantity - rest, unit, vat_code)]
    if rest:
        lines.append(Line(plan_name, rest, unit + 1, vat_code))
    return receipt(contact, lines, currency, policy)


def invoice_receipt(
    contact: Contact, lines: Sequence[Line], currency: str, policy: ReceiptPolicy
) -> dict[str, Any]:
    """An invoice: one item per line (its quantity, unit price and vat_code)."""
    return receipt(contact, lines, currency, policy)


def total_minor(receipt_: Mapping[str, Any], currency: str) -> int:
    """What the receipt's items add up to (amount x quantity), in minor units."""
    total = 0
    for item in receipt_["items"]:
        quantity = Decimal(str(item["quantity"]))
        if quantity != quantity.to_integral_value() or quantity < 1:
            raise ValueError(f"quantity {item['quantity']!r} is not a whole number of units")
        total += parse_minor(str(item["amount"]["value"]), currency) * int(quantity)
    return total


def refund_receipt(
    payment_receipt: Mapping[str, Any], refund_minor: int, currency: str
) -> dict[str, Any]:
    """The receipt of a refund of `refund_minor` of the payment that carried `payment_receipt`.

    A full refund returns the payment's items as they were. A partial one returns each
    item's share of the refund (proportional to the item's total, the minor units left
    by rounding down going to the largest remainders, then to the first items), each as
    one unit; items whose share is nothing are left out. The items add up to the refund
    exactly, as YooKassa requires.
    """
    paid = total_minor(payment_receipt, currency)
    if not 0 < refund_minor <= paid:
        raise ValueError(f"a refund of {refund_minor} does not fit a payment of {paid}")
    items = [dict(item) for item in payment_receipt["items"]]
    if refund_minor == paid:
        return {"customer": dict(payment_receipt["customer"]), "items": items}
    totals = [
        parse_minor(str(i["amount"]["value"]), currency) * int(Decimal(str(i["quantity"])))
        for i in items
    ]
    shares = [refund_minor * total // paid for total in totals]
    by_remainder = sorted(range(len(items)), key=lambda n: (-(refund_minor * totals[n] % paid), n))
    for n in by_remainder[: refund_minor - sum(shares)]:
        shares[n] += 1
    refunded = [
        {**item, "quantity": _quantity(1),
         "amount": {"value": format_minor(share, currency), "currency": currency}}
        for item, share in zip(items, shares, strict=True)
        if share > 0
    ]  # fmt: skip
    return {"customer": dict(payment_receipt["customer"]), "items": refunded}


def _quantity(units: int) -> str:
    """YooKassa's quantity: a decimal string (`"2.00"`), never a float."""
    return f"{units}.00"
