"""Refunds at Stripe as billing makes and reads them: `POST /v1/refunds` on the
PaymentIntent (or Charge) of the payment, our refund id in the metadata."""

from __future__ import annotations

from typing import Any

from billing_worker.domain.errors import ProviderError
from billing_worker.providers.base import PaymentStatus, RefundRequest, RefundResult

# refund.status -> what billing makes of it (`requires_action`: Stripe waits for details
# of the customer's account, then tells the outcome).
_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "pending": PaymentStatus.PENDING,
    "requires_action": PaymentStatus.PENDING,
    "failed": PaymentStatus.FAILED,
    "canceled": PaymentStatus.FAILED,
}
# The only reasons Stripe takes; any other text travels in the metadata only.
_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def refund_params(request: RefundRequest) -> dict[str, Any]:
    """The refund to create; ProviderError for a payment Stripe cannot refund this way."""
    ref = request.payment_ref
    if ref.startswith("pi_"):
        target = {"payment_intent": ref}
    elif ref.startswith("ch_"):
        target = {"charge": ref}
    else:  # e.g. an invoice of a subscription Stripe runs: refund it in the dashboard
        raise ProviderError(f"Stripe payment {ref} cannot be refunded by billing")
    metadata = {"refund_id": str(request.refund_id)}
    if request.reason:
        metadata["reason"] = request.reason[:500]
    params: dict[str, Any] = {**target, "amount": request.amount_minor, "metadata": metadata}
    if request.reason in _REASONS:
        params["reason"] = request.reason
    return params


def refund_result(refund: dict[str, Any]) -> RefundResult:
    status = _STATUS.get(str(refund.get("status")), PaymentStatus.PENDING)
    currency = str(refund["currency"]).upper()
    amount = int(refund["amount"])
    intent = refund.get("payment_intent")
    return RefundResult(
        ref=str(refund["id"]), status=status, amount_minor=amount, currency=currency,
        payment_ref=str(intent) if intent else None,
        failure_message=refund.get("failure_reason"),
        confirmation={
            "object": "refund", "id": str(refund["id"]), "status": str(refund.get("status")),
            "amount_minor": amount, "currency": currency, "charge": refund.get("charge"),
        },
    )  # fmt: skip
