"""Stripe-run subscriptions as billing reads them: the Subscription, what its status
means for ours, and the Invoice that charges one of its periods."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.domain.events import ProviderEvent, ProviderInvoice, ProviderInvoiceLine
from billing_worker.providers.base import LatestInvoice, ProviderSubscription, SubscriptionChange

# subscription.status -> ours
STATUS = {
    "incomplete": Sub.INCOMPLETE,
    "incomplete_expired": Sub.INCOMPLETE_EXPIRED,
    "trialing": Sub.TRIALING,
    "active": Sub.ACTIVE,
    "past_due": Sub.PAST_DUE,
    "unpaid": Sub.PAST_DUE,
    "paused": Sub.PAUSED,  # a trial ended without a payment method (pause_collection: below)
    "canceled": Sub.CANCELED,
}


def subscription_params(
    *,
    customer_ref: str,
    price_ref: str,
    payment_method_id: str | None,
    trial_days: int,
    metadata: Mapping[str, str],
    quantity: int = 1,
    coupon_ref: str | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "customer": customer_ref,
        "items": [{"price": price_ref, "quantity": quantity}],
        "metadata": dict(metadata),
        "expand": ["latest_invoice.confirmation_secret"],
        # Without a saved method the first invoice waits for the customer (Stripe.js).
        "payment_behavior": "allow_incomplete" if payment_method_id else "default_incomplete",
    }
    if payment_method_id:
        params["default_payment_method"] = payment_method_id
    if trial_days:
        params["trial_period_days"] = trial_days
    if coupon_ref:  # the coupon's stripe_coupon_id: Stripe discounts its own invoices
        params["discounts"] = [{"coupon": coupon_ref}]
    return params


def change_params(change: SubscriptionChange) -> dict[str, Any]:
    """The update of a subscription at Stripe: a paused one collects nothing (its invoices
    are voided) until `resumes_at` or until unpaused; "" unsets pause_collection."""
    if change.action == "resume":
        return {"cancel_at_period_end": False}
    if change.action == "unpause":
        return {"pause_collection": ""}
    pause: dict[str, Any] = {"behavior": "void"}
    if change.resumes_at is not None:
        pause["resumes_at"] = int(change.resumes_at.timestamp())
    return {"pause_collection": pause}


def plan_change_params(change: SubscriptionChange, current: dict[str, Any]) -> dict[str, Any]:
    """The update moving the subscription's (first) item onto `change.price_ref` x
    `change.quantity`: `always_invoice` invoices the proration at once (the invoice comes
    back expanded) and a decline refuses the whole update (`error_if_incomplete`);
    `none` bills the new price from the next invoice."""
    items = (current.get("items") or {}).get("data") or []
    if not items:
        raise ValueError(f"Stripe subscription {current.get('id')} has no item")
    params: dict[str, Any] = {
        "items": [{"id": items[0]["id"], "price": change.price_ref,
                   "quantity": change.quantity}],
        "proration_behavior": change.proration_behavior,
        "expand": ["latest_invoice"],
    }  # fmt: skip
    if change.proration_behavior == "always_invoice":  # a declined proration: no change
        params["payment_behavior"] = "error_if_incomplete"
    return params


def invoice_of(invoice: Any) -> LatestInvoice | None:
    """An expanded invoice (a dict); an id alone tells nothing."""
    if not isinstance(invoice, dict) or "total" not in invoice:
        return None
    return LatestInvoice(
        ref=str(invoice["id"]), status=str(invoice.get("status")),
        billing_reason=invoice.get("billing_reason"), total_minor=int(invoice["total"]),
        amount_paid_minor=int(invoice.get("amount_paid") or 0),
        currency=str(invoice.get("currency", "")).upper(),
    )  # fmt: skip


def subscription(found: Any) -> ProviderSubscription:
    sub: dict[str, Any] = found.to_dict()
    items = (sub.get("items") or {}).get("data") or [{}]
    start, end = items[0].get("current_period_start"), items[0].get("current_period_end")
    invoice = sub.get("latest_invoice")
    secret = None
    if isinstance(invoice, dict):
        secret = (invoice.get("confirmation_secret") or {}).get("client_secret")
    price = items[0].get("price")
    price_ref = price.get("id") if isinstance(price, dict) else price
    pause = sub.get("pause_collection") or {}
    resumes_at = pause.get("resumes_at")
    return ProviderSubscription(
        ref=str(sub["id"]),
        status=str(sub["status"]),
        period_start=datetime.fromtimestamp(start, UTC) if start else None,
        period_end=datetime.fromtimestamp(end, UTC) if end else None,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        client_secret=secret if sub["status"] == "incomplete" else None,
        paused=bool(pause) or sub["status"] == "paused",
        resumes_at=datetime.fromtimestamp(resumes_at, UTC) if resumes_at else None,
        price_ref=str(price_ref) if price_ref else None,
        quantity=int(items[0]["quantity"]) if items[0].get("quantity") is not None else None,
        latest_invoice=invoice_of(invoice),
    )


def confirmed_invoice(claim: ProviderEvent, invoice: dict[str, Any]) -> ProviderEvent | None:
    """An `invoice.*` claim as the Invoice re-read from Stripe tells it: paid, or open
    (or uncollectible) after a failed charge, and of which subscription."""
    paid = claim.event_type == "invoice.paid"
    status = str(invoice.get("status"))
    if (paid and status != "paid") or (not paid and status not in ("open", "uncollectible")):
        return None
    parent = (invoice.get("parent") or {}).get("subscription_details") or {}
    ref = parent.get("subscription") or invoice.get("subscription")
    if not ref:
        return None
    amount = int(invoice["amount_paid"] if paid else invoice["amount_due"])
    currency = str(invoice["currency"]).upper()
    return dataclasses.replace(
        claim, subscription_ref=str(ref), amount_minor=amount, currency=currency,
        invoice=paid_invoice(invoice, currency) if paid else None,
        confirmation={
            "object": "invoice", "id": str(invoice["id"]), "status": status,
            "amount_minor": amount, "currency": currency,
        },
    )  # fmt: skip


def paid_invoice(invoice: dict[str, Any], currency: str) -> ProviderInvoice:
    """The paid Invoice's lines (proration lines included), tax and amount paid, for its
    mirror. Stripe's tax is `total_taxes[].amount` (API 2025+), else the older `tax`."""
    lines = tuple(_line(line) for line in (invoice.get("lines") or {}).get("data") or [])
    taxes = invoice.get("total_taxes")
    tax = sum(int(t["amount"]) for t in taxes) if taxes else int(invoice.get("tax") or 0)
    return ProviderInvoice(
        ref=str(invoice["id"]), currency=currency, amount_paid_minor=int(invoice["amount_paid"]),
        tax_minor=tax, billing_reason=invoice.get("billing_reason"), lines=lines,
    )  # fmt: skip


def _line(line: dict[str, Any]) -> ProviderInvoiceLine:
    parent = line.get("parent") or {}
    details = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
    proration = bool(details.get("proration", line.get("proration", False)))
    return ProviderInvoiceLine(
        description=str(line.get("description") or "Stripe invoice line"),
        quantity=max(int(line.get("quantity") or 1), 1),
        amount_minor=int(line["amount"]),
        proration=proration,
    )
