"""The built-in sandbox provider: no keys, no network, same completion path as webhooks.

Creating a payment returns `pending` plus the callback the sandbox will deliver through
`billing.provider-events` (written to the outbox in the same transaction, so it is sent
only after the deposit is committed). Like Stripe's test cards, `payment_method_id`
picks the outcome: absent or `pm_card_visa` succeeds, `pm_card_chargeDeclined` fails.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.base import (
    Notification,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
)

DECLINING_METHODS = {
    "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
}
_OUTCOMES = {"payment.succeeded": PaymentOutcome.SUCCEEDED, "payment.failed": PaymentOutcome.FAILED}


class SandboxGateway:
    name = "sandbox"
    needs_customer = False

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        return f"sbx_cus_{uuid.uuid5(uuid.NAMESPACE_URL, user_id).hex}"

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        # Deterministic ids: a redelivered command yields the same payment and the same event.
        seed = uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{request.idempotency_key}")
        payment_id = f"sbx_pi_{seed.hex}"
        event_id = f"sbx_evt_{seed.hex}"
        decline = DECLINING_METHODS.get(request.payment_method_id or "")
        data: dict[str, Any] = {
            "payment_id": payment_id,
            "transaction_id": str(request.transaction_id),
            "amount_minor": request.amount_minor,
            "currency": request.currency,
        }
        if decline:
            data |= {"failure_code": decline[0], "failure_message": decline[1]}
        body = {
            "id": event_id,
            "type": "payment.failed" if decline else "payment.succeeded",
            "data": data,
        }
        notification = Notification(event_id, json.dumps(body).encode())
        return PaymentResult(payment_id, PaymentStatus.PENDING, notifications=(notification,))

    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        # The sandbox keeps no state: the outcome always arrives as its event.
        return PaymentResult(provider_ref, PaymentStatus.PENDING)

    async def verify_event(self, event: ProviderEvent) -> bool:
        return True  # the sandbox's callbacks come from this worker itself

    def parse_event(self, body: bytes) -> ProviderEvent:
        try:
            event = json.loads(body)
            event_type = str(event["type"])
            data = event["data"]
            return ProviderEvent(
                provider=self.name,
                event_id=str(event["id"]),
                outcome=_OUTCOMES.get(event_type),
                provider_ref=str(data["payment_id"]),
                event_type=event_type,
                failure_code=data.get("failure_code"),
                failure_message=data.get("failure_message"),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"malformed sandbox event: {error}") from error
