"""Invoice commands, queries and reply objects."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from billing_contracts.coupons import CouponCode, DiscountOut
from billing_contracts.envelope import Command, Query
from billing_contracts.money import Currency, Money
from billing_contracts.receipts import (
    ReceiptEmail,
    ReceiptPhone,
    customer_email_field,
    customer_phone_field,
)
from billing_contracts.taxes import TaxRateCode
from billing_contracts.wallet import PaymentAction, TransactionOut, UserId

MAX_LINES = 100
MAX_QUANTITY = 1_000_000


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceLineIn(BaseModel):
    """One line of a new invoice; its amount is quantity x unit_price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1, max_length=500, examples=["Pro plan, March"])
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True, examples=[1])
    unit_price: Money = Field(
        description="Zero is allowed (a free line). A currency other than the invoice's is "
        "refused by the worker with `currency_mismatch`.",
        examples=[{"amount": "9.99", "currency": "USD"}],
    )
    tax_rate: TaxRateCode | None = Field(
        default=None,
        description="The code of a tax rate (`billing.tax-rate.upsert`) this line is taxed "
        "at; an unknown code is `not_found`. Absent: the line is untaxed.",
    )


class CreateInvoice(Command):
    """`billing.invoice.create`: issue an invoice (it gets its `number` here)."""

    user_id: UserId
    currency: Currency
    lines: list[InvoiceLineIn] = Field(min_length=1, max_length=MAX_LINES)
    due_at: AwareDatetime | None = Field(default=None, examples=["2026-04-01T00:00:00Z"])
    order_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The order this invoice bills, if any",
        examples=["ord_42"],
    )
    coupon: CouponCode | None = Field(
        default=None,
        description="A coupon (`billing.coupon.upsert`) taken off the lines before tax; "
        "unknown: `not_found`, inactive: `invalid_state`, an amount off in another currency: "
        "`currency_mismatch` (nothing is written on a refusal)",
    )


_OWNER = (
    "The user the {0} belongs to; another user's {0} is answered `not_found`, exactly as "
    "an id that does not exist"
)


class InvoicePaySource(StrEnum):
    """Where `billing.invoice.pay` takes the money from."""

    BALANCE = "balance"
    STRIPE = "stripe"
    YOOKASSA = "yookassa"


class PayInvoice(Command):
    """`billing.invoice.pay`: pay an open (or written-off) invoice of the user from the
    user's balance, or by card through a provider (`stripe`, `yookassa`)."""

    user_id: UserId = Field(description=_OWNER.format("invoice"))
    invoice_id: UUID
    source: InvoicePaySource = Field(
        description="Where the money comes from: `balance`, the user's account in the "
        "invoice currency (paid at once); `stripe` / `yookassa`, a provider payment of the "
        "invoice total (the reply's `payment` is pending, with `payment_action` when the "
        "customer must confirm; the invoice is paid when the provider confirms it)"
    )
    # Added with card payments; the deposit command's fields, for a provider source only.
    payment_method_id: str | None = Field(
        default=None,
        max_length=255,
        description="A provider source only: a saved payment method of this user, as for "
        "`billing.wallet.deposit` (another user's is `not_found`); absent: the user's "
        "default method, else the customer pays through payment_action",
    )
    return_url: str | None = Field(default=None, max_length=2048)
    customer_email: ReceiptEmail | None = customer_email_field()
    customer_phone: ReceiptPhone | None = customer_phone_field()

    @model_validator(mode="after")
    def _provider_fields(self) -> PayInvoice:
        provider_only = (self.payment_method_id, self.return_url, self.customer_email,
                         self.customer_phone)  # fmt: skip
        if self.source == "balance" and any(value is not None for value in provider_only):
            raise ValueError(
                "payment_method_id, return_url and customer_email/phone are for a provider "
                "source (stripe, yookassa), not the balance"
            )
        return self


class VoidInvoice(Command):
    """`billing.invoice.void`: cancel one of the user's open invoices for good; the document
    and its number stay (gap-free numbering), it can no longer be paid."""

    user_id: UserId = Field(description=_OWNER.format("invoice"))
    invoice_id: UUID
    reason: str = Field(min_length=1, max_length=500, examples=["issued in error"])


class MarkInvoiceUncollectible(Command):
    """`billing.invoice.mark-uncollectible`: write one of the user's open invoices off; it
    can still be paid later (`billing.invoice.pay`), as at Stripe."""

    user_id: UserId = Field(description=_OWNER.format("invoice"))
    invoice_id: UUID
    reason: str | None = Field(default=None, min_length=1, max_length=500,
                               examples=["customer unreachable"])  # fmt: skip


class GetInvoices(Query):
    """`billing.invoice.get`: one of the user's invoices by id, or the user's invoices,
    newest first, paged."""

    user_id: UserId = Field(description=_OWNER.format("invoice"))
    invoice_id: UUID | None = Field(
        default=None,
        description="Given: that one invoice (if it is the user's; `limit` and `cursor` are "
        "then ignored); absent: the user's invoices, paged",
    )
    limit: int = Field(default=20, ge=1, le=100, strict=True)
    cursor: str | None = Field(default=None, max_length=200)


class InvoiceLineOut(BaseModel):
    description: str
    quantity: int
    unit_price: Money
    amount: Money = Field(description="quantity x unit_price (an inclusive rate: tax included)")
    # Added with tax rates; absent from older workers' replies and events.
    tax_rate: str | None = Field(default=None, description="The rate's code, if taxed")
    tax_percent: str | None = Field(
        default=None, description="The rate's percent when the invoice was issued", examples=["19"]
    )
    tax_inclusive: bool | None = Field(
        default=None, description="Whether `amount` already contains the tax"
    )
    tax: Money | None = Field(
        default=None,
        description="The line's tax, rounded half to even to the currency's minor unit; "
        "the line's net is amount - tax when inclusive, else amount",
    )
    # Added with coupons; absent from older workers' replies and events.
    discount: Money | None = Field(
        default=None,
        description="The line's share of the invoice's discount, taken off `amount` before "
        "the tax (the tax is on amount - discount)",
    )
    # Added with Stripe invoice mirrors; absent from older workers' replies and events.
    proration: bool | None = Field(
        default=None, description="A Stripe mirror's proration line (a plan change); else absent"
    )
    credit: bool | None = Field(
        default=None,
        description="true: the line takes `amount` off the invoice (a proration's credit for "
        "unused time: amounts on the wire are never negative); else absent",
    )


class InvoiceOut(BaseModel):
    id: UUID
    number: str = Field(examples=["INV-2026-000001"])
    user_id: str
    order_id: str | None
    status: InvoiceStatus
    currency: str
    lines: list[InvoiceLineOut]
    total: Money = Field(description="subtotal - discount + tax: what is paid")
    due_at: AwareDatetime | None
    paid_at: AwareDatetime | None
    # Added with tax rates; absent from older workers' replies.
    subtotal: Money | None = Field(default=None, description="The sum of the lines' nets")
    tax: Money | None = Field(default=None, description="The sum of the lines' taxes")
    # Added with coupons; absent from older workers' replies.
    discount: Money | None = Field(
        default=None, description="The sum of the discounts (of the lines' shares)"
    )
    discounts: list[DiscountOut] = Field(
        default_factory=list, description="The coupon the invoice was discounted by, if any"
    )
    # Added with the invoice lifecycle; absent from older workers' replies.
    subscription_id: UUID | None = Field(
        default=None, description="The subscription whose period this invoice bills, if any"
    )
    period_index: int | None = Field(
        default=None, description="That period (0 = the first); with subscription_id"
    )
    overdue_at: AwareDatetime | None = Field(
        default=None, description="When the worker found it open past its due_at (once)"
    )
    voided_at: AwareDatetime | None = None
    uncollectible_at: AwareDatetime | None = None
    reason: str | None = Field(default=None, description="Why it was voided or written off")
    # Added with Stripe invoice mirrors; absent from older workers' replies.
    stripe_invoice_id: str | None = Field(
        default=None,
        description="The Stripe invoice this one mirrors (a Stripe-run subscription's, "
        "written paid when Stripe confirms it; total = Stripe's amount_paid)",
    )


class InvoicePayResult(InvoiceOut):
    """The invoice after `billing.invoice.pay`; a provider source adds its payment.

    Paid from the balance: `status` is `paid`, no `payment`. By card: the invoice stays
    `open` and `payment` is the provider payment (a `deposit` of the invoice total,
    `processing`, or `completed` when a saved method was charged at once and the invoice
    is then `paid`); `invoice.paid` follows the provider's confirmation."""

    payment: TransactionOut | None = Field(
        default=None, description="The card payment of a provider source; null from the balance"
    )
    payment_action: PaymentAction | None = Field(
        default=None, description="What the customer must do for the card payment, if anything"
    )


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None
