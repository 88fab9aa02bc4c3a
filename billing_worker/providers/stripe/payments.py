"""PaymentIntents and Charges as billing reads them: the payment's status, amount,
currency and our transaction id; a refund as the charge's running refunded total."""

from __future__ import annotations

import dataclasses
from typing import Any

import stripe

from billing_worker.domain.errors import ProviderError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent, RefundFacts
from billing_worker.providers.base import PaymentRequest, PaymentResult, PaymentStatus

# payment_intent.status -> what billing makes of it
_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.FAILED,
    "processing": PaymentStatus.PENDING,
    "requires_payment_method": PaymentStatus.PENDING,
    "requires_confirmation": PaymentStatus.PENDING,
    "requires_action": PaymentStatus.PENDING,
    "requires_capture": PaymentStatus.PENDING,
}
# Stripe amounts are in the currency's smallest unit like ours, except for a few
# currencies Stripe treats specially; refuse those rather than charge a wrong amount.
UNSUPPORTED_CURRENCIES = frozenset({"HUF", "TWD", "ISK", "UGX"})
_NEEDS_CUSTOMER = ("requires_payment_method", "requires_action", "requires_confirmation")


def intent_params(request: PaymentRequest) -> dict[str, Any]:
    """The PaymentIntent to create for a payment request; ProviderError if Stripe cannot."""
    if request.currency in UNSUPPORTED_CURRENCIES:
        raise ProviderError(f"Stripe deposits in {request.currency} are not supported")
    params: dict[str, Any] = {
        "amount": request.amount_minor,
        "currency": request.currency.lower(),
        "metadata": {"transaction_id": str(request.transaction_id), "user_id": request.user_id},
    }
    if request.customer_ref:
        params["customer"] = request.customer_ref
    if request.description:
        params["description"] = request.description
    if request.payment_method_id:  # a saved method: charge it now, without the customer
        params |= {
            "payment_method": request.payment_method_id,
            "confirm": True,
            "off_session": True,
            # no customer is present to follow a redirect, and Stripe requires a
            # return_url for confirming with redirect-capable methods otherwise
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        }
    else:
        params["automatic_payment_methods"] = {"enabled": True}
    return params


def result(payment_intent: Any) -> PaymentResult:
    return result_of(payment_intent.to_dict())


def result_of(intent: dict[str, Any]) -> PaymentResult:
    status = _STATUS.get(intent["status"], PaymentStatus.PENDING)
    action = None
    if intent["status"] in _NEEDS_CUSTOMER:
        action = {"type": "client_secret", "client_secret": intent.get("client_secret")}
    error = intent.get("last_payment_error") or {}
    currency = str(intent["currency"]).upper()
    received = intent.get("amount_received")
    amount = int(received if status is PaymentStatus.SUCCEEDED and received else intent["amount"])
    return PaymentResult(
        provider_ref=str(intent["id"]),
        status=status,
        action=action,
        failure_code=(error.get("decline_code") or error.get("code")) if error else None,
        failure_message=error.get("message") if error else None,
        amount_minor=amount,
        currency=currency,
        transaction_ref=(intent.get("metadata") or {}).get("transaction_id"),
        confirmation={
            "object": "payment_intent", "id": str(intent["id"]),
            "status": str(intent["status"]), "amount_minor": amount, "currency": currency,
        },
    )  # fmt: skip


def cancel_result(intent: dict[str, Any]) -> PaymentResult:
    """A PaymentIntent as read after a cancel: `canceled` is CANCELED here, not FAILED."""
    read = result_of(intent)
    if intent["status"] == "canceled":
        return dataclasses.replace(read, status=PaymentStatus.CANCELED, action=None)
    return read


def declined(error: stripe.CardError) -> PaymentResult:
    """A card Stripe declined while creating the intent: a failed payment, not an error."""
    body: dict[str, Any] = error.json_body if isinstance(error.json_body, dict) else {}
    detail = body.get("error") or {}
    intent = detail.get("payment_intent") or {}
    return PaymentResult(
        provider_ref=str(intent.get("id") or f"declined:{detail.get('request_log_url', '')}"),
        status=PaymentStatus.FAILED,
        failure_code=detail.get("decline_code") or error.code,
        failure_message=detail.get("message") or error.user_message,
    )


def confirmed_payment(claim: ProviderEvent, intent: dict[str, Any]) -> ProviderEvent | None:
    """A `payment_intent.*` claim as the PaymentIntent re-read from Stripe tells it."""
    outcome = _intent_outcome(intent, claim.outcome)
    if outcome is None:
        return None
    read = result_of(intent)
    return dataclasses.replace(
        claim, outcome=outcome, provider_ref=str(intent["id"]),
        failure_code=read.failure_code, failure_message=read.failure_message,
        amount_minor=read.amount_minor, currency=read.currency,
        transaction_ref=read.transaction_ref, saved_method_ref=None,
        confirmation=dict(read.confirmation or {}),
    )  # fmt: skip


def _intent_outcome(
    intent: dict[str, Any], claimed: PaymentOutcome | None
) -> PaymentOutcome | None:
    """What the PaymentIntent's state says happened; None while nothing has.

    A failed attempt sends a PaymentIntent back to `requires_payment_method` with the
    error; it counts as the failure a `payment_intent.payment_failed` claims only then.
    """
    status = intent["status"]
    if status == "succeeded":
        return PaymentOutcome.SUCCEEDED
    if status == "canceled":
        return PaymentOutcome.CANCELED
    if (
        claimed is PaymentOutcome.FAILED
        and status == "requires_payment_method"
        and intent.get("last_payment_error")
    ):
        return PaymentOutcome.FAILED
    return None


def confirmed_refund(claim: ProviderEvent, charge: dict[str, Any]) -> ProviderEvent | None:
    """`charge.refunded` as the Charge re-read from Stripe tells it: its running
    refunded total is the truth."""
    refunded = int(charge.get("amount_refunded") or 0)
    intent = charge.get("payment_intent")
    if refunded <= 0 or not intent:
        return None
    currency = str(charge["currency"]).upper()
    return dataclasses.replace(
        claim, provider_ref=str(intent), amount_minor=int(charge["amount"]),
        currency=currency,
        transaction_ref=(charge.get("metadata") or {}).get("transaction_id"),
        refund=RefundFacts(ref=str(charge["id"]), currency=currency, total_minor=refunded),
        confirmation={
            "object": "charge", "id": str(charge["id"]), "status": str(charge["status"]),
            "charge_amount_minor": int(charge["amount"]), "currency": currency,
            "refunded_total_minor": refunded,
        },
    )  # fmt: skip
