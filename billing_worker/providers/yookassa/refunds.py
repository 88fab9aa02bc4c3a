"""Refunds at YooKassa as billing reads them (`POST /v3/refunds`, `GET /v3/refunds/{id}`)."""

from __future__ import annotations

from typing import Any

from billing_worker.domain.money import parse_minor
from billing_worker.providers.base import PaymentStatus, RefundResult

_STATUS = {
    "pending": PaymentStatus.PENDING,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.FAILED,
}


def refund_result(refund: dict[str, Any]) -> RefundResult:
    status = _STATUS.get(str(refund.get("status")), PaymentStatus.PENDING)
    currency = str(refund["amount"]["currency"])
    amount = parse_minor(str(refund["amount"]["value"]), currency)
    cancellation = refund.get("cancellation_details") or {}
    return RefundResult(
        ref=str(refund["id"]), status=status, amount_minor=amount, currency=currency,
        payment_ref=str(refund.get("payment_id")), failure_message=cancellation.get("reason"),
        confirmation={
            "object": "refund", "id": str(refund["id"]), "status": str(refund.get("status")),
            "amount_minor": amount, "currency": currency,
            "payment_id": str(refund.get("payment_id")),
        },
    )  # fmt: skip
