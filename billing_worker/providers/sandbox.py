"""The built-in sandbox provider: no keys, no network, same completion path as webhooks.

Only for development and tests: it exists on a worker only with
`BILLING_SANDBOX_ENABLED=true`, which the worker refuses together with live provider
keys. Creating a payment returns `pending` plus the callback the sandbox will deliver
through `billing.provider-events` (written to the outbox in the same transaction, so it
is sent only after the deposit is committed). The callback carries an HMAC of its body
under a key only the worker holds (kept in its database), so a callback published by
anyone else on the queue is refused as forged. Like Stripe's test cards,
`payment_method_id` picks the outcome: absent or `pm_card_visa` succeeds,
`pm_card_chargeDeclined` fails, and `pm_card_pending` stays pending (no callback: a
customer who never pays, to try `billing.wallet.deposit.cancel` and the expiry on).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from typing import Any

from billing_contracts import names
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.base import (
    Forged,
    Notification,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    RefundRequest,
    RefundResult,
    signature_header,
)
from billing_worker.providers.observed import observed

DECLINING_METHODS = {
    "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
}
PENDING_METHOD = "pm_card_pending"  # the customer never pays: no callback is sent
_OUTCOMES = {"payment.succeeded": PaymentOutcome.SUCCEEDED, "payment.failed": PaymentOutcome.FAILED}
EVENT_TYPES = frozenset(_OUTCOMES)  # the ones billing acts on
NAME = "sandbox"
SECRET_NAME = "sandbox-callbacks"  # noqa: S105 - the name of its row in service_secrets


class SandboxGateway:
    name = NAME
    needs_customer = False
    trusts_method_ids = False  # test values such as `pm_card_chargeDeclined` select outcomes
    rereadable = False  # it keeps no state: the outcome always arrives as its event

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key  # set at start-up from the database (see use_key)

    def use_key(self, key: bytes) -> None:
        self._key = key

    def signature(self, body: bytes) -> str:
        """HMAC-SHA256 of the body's canonical JSON (the outbox keeps bodies as jsonb,
        which may reorder keys and spacing on the way out); ValueError if not JSON."""
        if not self._key:
            raise RuntimeError("the sandbox has no callback key yet (start-up loads it)")
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()

    @observed("create_customer")
    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        return f"sbx_cus_{uuid.uuid5(uuid.NAMESPACE_URL, user_id).hex}"

    @observed("create_payment")
    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        payment_id, event_id, body = callback(request)
        if request.payment_method_id == PENDING_METHOD:
            return PaymentResult(payment_id, PaymentStatus.PENDING)
        signed = {names.SANDBOX_SIGNATURE_HEADER: self.signature(body)}
        notification = Notification(event_id, body, signed)
        return PaymentResult(payment_id, PaymentStatus.PENDING, notifications=(notification,))

    @observed("fetch_payment")
    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        # The sandbox keeps no state: the outcome always arrives as its event.
        return PaymentResult(provider_ref, PaymentStatus.PENDING)

    @observed("cancel_payment")
    async def cancel_payment(self, provider_ref: str, idempotency_key: str) -> PaymentResult:
        # No state to consult: a pending sandbox payment is canceled (its callback, if it
        # comes after, finds the deposit canceled and is stale).
        confirmation = {"object": "sandbox_payment", "id": provider_ref, "status": "canceled"}
        return PaymentResult(provider_ref, PaymentStatus.CANCELED, confirmation=confirmation)

    @observed("refund")
    async def refund(self, request: RefundRequest) -> RefundResult:
        """Refunds succeed at once (no callback): the id is derived from the key, so a
        second call answers the same refund."""
        seed = uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-refund:{request.idempotency_key}")
        ref = f"sbx_re_{seed.hex}"
        return RefundResult(
            ref, PaymentStatus.SUCCEEDED, request.amount_minor, request.currency,
            payment_ref=request.payment_ref,
            confirmation={"object": "sandbox_refund", "id": ref, "status": "succeeded",
                          "amount_minor": request.amount_minor, "currency": request.currency},
        )  # fmt: skip

    @observed("fetch_refund")
    async def fetch_refund(self, ref: str) -> RefundResult:
        raise NotImplementedError("sandbox refunds complete at once: nothing to re-read")

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        given = signature_header(
            headers,
            names.SANDBOX_SIGNATURE_HEADER,
            "a sandbox callback without the worker's signature",
        )
        try:
            expected = self.signature(body)
        except (ValueError, RecursionError):
            raise Forged("a sandbox callback that is not JSON") from None
        if not hmac.compare_digest(given, expected):
            raise Forged("a sandbox callback with a wrong signature")

    @observed("confirm")
    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        return claim  # authenticated by the worker's own HMAC: the body is the sandbox's word

    def parse_event(self, body: bytes) -> ProviderEvent:
        try:
            event = json.loads(body)
            # A lone surrogate ("\ud800") or a NUL is no text PostgreSQL can store: refused
            # here, as the contract models' JSON parser refuses them (UnicodeEncodeError and
            # the NUL check: ValueErrors).
            json.dumps(event, ensure_ascii=False).encode()
            if _has_nul(event):
                raise ValueError("a NUL character is in no text PostgreSQL can store")
            event_type = str(event["type"])
            data = event["data"]
            outcome = _OUTCOMES.get(event_type)
            amount, currency = _minor_units(data["amount_minor"]), str(data["currency"])
            payment_id = _ident(data["payment_id"], "payment_id")
            return ProviderEvent(
                provider=self.name,
                event_id=_ident(event["id"], "id"),
                outcome=outcome,
                provider_ref=payment_id,
                event_type=event_type,
                failure_code=data.get("failure_code"),
                failure_message=data.get("failure_message"),
                amount_minor=amount,
                currency=currency,
                transaction_ref=_text(data.get("transaction_id")),
                confirmation={
                    "object": "sandbox_payment", "id": payment_id,
                    "status": event_type, "amount_minor": amount, "currency": currency,
                },
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"malformed sandbox event: {error}") from error


BIGINT_MAX = 2**63 - 1


MAX_ID_LENGTH = 255  # the inbox's idempotency key (ck_idempotency_records_key_length)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _ident(value: Any, name: str) -> str:
    """An id the inbox and the payment rows can hold: 1-255 characters of text."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"{name} must be text of 1-{MAX_ID_LENGTH} characters, not {value!r:.40}")
    return value


def _minor_units(value: Any) -> int:
    """A positive whole number of minor units a BIGINT column can hold, or ValueError.

    JSON numbers arrive as whatever `json.loads` makes of them (1.5, Infinity, NaN,
    true), so the type is checked, not converted."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= BIGINT_MAX:
        raise ValueError(f"amount_minor must be a positive whole number, not {value!r:.40}")
    return value


def callback(request: PaymentRequest) -> tuple[str, str, bytes]:
    """(payment id, event id, body) of the callback the sandbox sends for a payment.

    Deterministic ids: a redelivered command yields the same payment and the same event.
    """
    seed = uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{request.idempotency_key}")
    payment_id, event_id = f"sbx_pi_{seed.hex}", f"sbx_evt_{seed.hex}"
    decline = DECLINING_METHODS.get(request.payment_method_id or "")
    data: dict[str, Any] = {
        "payment_id": payment_id,
        "transaction_id": str(request.transaction_id),
        "amount_minor": request.amount_minor,
        "currency": request.currency,
    }
    if decline:
        data |= {"failure_code": decline[0], "failure_message": decline[1]}
    event = {"id": event_id, "type": "payment.failed" if decline else "payment.succeeded",
             "data": data}  # fmt: skip
    return payment_id, event_id, json.dumps(event).encode()


def _text(value: object) -> str | None:
    return None if value is None else str(value)
