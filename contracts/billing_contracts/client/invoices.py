"""The invoice calls of `BillingClient`: create, pay, void, write off, get and list invoices."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceLineIn,
    InvoiceOut,
    InvoicePage,
    InvoicePayResult,
    MarkInvoiceUncollectible,
    PayInvoice,
    VoidInvoice,
)


class InvoiceCalls(RpcClient):
    """`billing.invoice.*`."""

    async def create_invoice(
        self,
        *,
        user_id: str,
        currency: str,
        lines: Sequence[InvoiceLineIn],
        idempotency_key: str,
        due_at: datetime | None = None,
        order_id: str | None = None,
        coupon: str | None = None,
        timeout: float | None = None,
    ) -> InvoiceOut:
        """`billing.invoice.create`: an `open` invoice with its number, less `coupon` (if
        given) before tax. Errors: `CurrencyMismatch` (also an amount-off coupon in
        another currency), `InvalidState` (the order has an invoice already; an inactive
        coupon), `NotFound` (a line names an unknown tax rate; an unknown coupon)."""
        command = CreateInvoice(
            idempotency_key=idempotency_key,
            user_id=user_id,
            currency=currency,
            lines=list(lines),
            due_at=due_at,
            order_id=order_id,
            coupon=coupon,
        )
        return await self.request(names.INVOICE_CREATE, command, InvoiceOut, timeout=timeout)

    async def pay_invoice(
        self,
        *,
        user_id: str,
        invoice_id: UUID | str,
        idempotency_key: str,
        source: Literal["balance", "stripe", "yookassa"] = "balance",
        payment_method_id: str | None = None,
        return_url: str | None = None,
        timeout: float | None = None,
    ) -> InvoicePayResult:
        """`billing.invoice.pay` of one of the user's invoices from the user's balance, or
        by card (`source="stripe"` / `"yookassa"`: the reply's `payment` is pending, with
        `payment_action` when the customer must confirm; `invoice.paid` follows the
        provider's confirmation). Errors: `NotFound` (no such invoice of this user),
        `InsufficientFunds` (the invoice stays open), `InvalidState` (not open, or a card
        payment of it is in flight), `ProviderError`."""
        command = PayInvoice(
            idempotency_key=idempotency_key, user_id=user_id, invoice_id=invoice_id,
            source=source, payment_method_id=payment_method_id, return_url=return_url,
        )  # fmt: skip
        return await self.request(names.INVOICE_PAY, command, InvoicePayResult, timeout=timeout)

    async def void_invoice(
        self,
        *,
        user_id: str,
        invoice_id: UUID | str,
        reason: str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> InvoiceOut:
        """`billing.invoice.void` of one of the user's open invoices (its number stays).
        Errors: `NotFound` (also another user's), `InvalidState` (not open, e.g. paid, or
        a subscription period's invoice)."""
        command = VoidInvoice(
            idempotency_key=idempotency_key, user_id=user_id, invoice_id=invoice_id, reason=reason
        )
        return await self.request(names.INVOICE_VOID, command, InvoiceOut, timeout=timeout)

    async def mark_invoice_uncollectible(
        self,
        *,
        user_id: str,
        invoice_id: UUID | str,
        idempotency_key: str,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> InvoiceOut:
        """`billing.invoice.mark-uncollectible` of one of the user's open invoices (it can
        still be paid). Errors: `NotFound` (also another user's), `InvalidState`."""
        command = MarkInvoiceUncollectible(
            idempotency_key=idempotency_key, user_id=user_id, invoice_id=invoice_id, reason=reason
        )
        return await self.request(
            names.INVOICE_MARK_UNCOLLECTIBLE, command, InvoiceOut, timeout=timeout
        )

    async def get_invoice(
        self, *, user_id: str, invoice_id: UUID | str, timeout: float | None = None
    ) -> InvoiceOut:
        """`billing.invoice.get` by id. Errors: `NotFound` (also another user's)."""
        query = GetInvoices(user_id=user_id, invoice_id=invoice_id)
        return await self.request(names.INVOICE_GET, query, InvoiceOut, timeout=timeout)

    async def list_invoices(
        self,
        *,
        user_id: str,
        limit: int = 20,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> InvoicePage:
        """`billing.invoice.get` by user: newest first; pass `next_cursor` for more."""
        query = GetInvoices(user_id=user_id, limit=limit, cursor=cursor)
        return await self.request(names.INVOICE_GET, query, InvoicePage, timeout=timeout)
