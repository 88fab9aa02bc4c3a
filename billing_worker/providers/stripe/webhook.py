"""Stripe's webhooks: the event body, and its `Stripe-Signature`.

The relay checks the signature with a timestamp tolerance (`verify_signature`) and
forwards the header; the worker checks it again without one (`check_forwarded`), then
re-reads from Stripe's API whatever the event claims (see `gateway`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

import stripe

from billing_contracts import names
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.base import Forged, signature_header
from billing_worker.providers.stripe import NAME

# Events about payments: what each claims happened.
PAYMENT_EVENTS = {
    "payment_intent.succeeded": PaymentOutcome.SUCCEEDED,
    "payment_intent.payment_failed": PaymentOutcome.FAILED,
    "payment_intent.canceled": PaymentOutcome.CANCELED,
    "charge.refunded": PaymentOutcome.REFUNDED,
}
# Events about Stripe-run subscriptions: the worker re-reads the subscription on each;
# the invoice events also tell of a period's charge.
PERIOD_CHARGES = {
    "invoice.paid": PaymentOutcome.SUCCEEDED,
    "invoice.payment_failed": PaymentOutcome.FAILED,
}
SUBSCRIPTION_EVENTS = frozenset(
    {*PERIOD_CHARGES, "customer.subscription.updated", "customer.subscription.deleted",
     "customer.subscription.paused", "customer.subscription.resumed"}
)  # fmt: skip
SETUP_EVENTS = frozenset({"setup_intent.succeeded"})  # a saved method (handlers/method_setup)
EVENT_TYPES = frozenset({*PAYMENT_EVENTS, *SUBSCRIPTION_EVENTS, *SETUP_EVENTS})  # billing acts on


def event_id(body: bytes) -> str:
    """The event's id (what the relay publishes it under); ValueError, KeyError or
    TypeError when the body is no Stripe event."""
    return str(json.loads(body)["id"])


def parse_event(body: bytes) -> ProviderEvent:
    """The claim an event body makes; ValueError when malformed."""
    try:
        event = json.loads(body)
        event_type = str(event["type"])
        obj = event["data"]["object"]
        outcome = PAYMENT_EVENTS.get(event_type)
        ref = obj.get("payment_intent") if event_type.startswith("charge.") else obj.get("id")
        if event_type in SUBSCRIPTION_EVENTS:
            return _subscription_event(event, obj)
        return ProviderEvent(
            provider=NAME,
            event_id=str(event["id"]),
            outcome=outcome,
            provider_ref=str(ref) if ref else None,
            event_type=event_type,
            object_ref=str(obj["id"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed Stripe event: {error}") from error


def _subscription_event(event: dict[str, Any], obj: dict[str, Any]) -> ProviderEvent:
    event_type = str(event["type"])
    if event_type.startswith("invoice."):
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        ref = parent.get("subscription") or obj.get("subscription")
        charge = PERIOD_CHARGES[event_type]
        paid = charge is PaymentOutcome.SUCCEEDED
        amount = obj.get("amount_paid") if paid else obj.get("amount_due")
        error = {} if paid else (obj.get("last_finalization_error") or {})
        return ProviderEvent(
            provider=NAME, event_id=str(event["id"]), outcome=None,
            provider_ref=str(obj["id"]), event_type=event_type,
            failure_code=None if paid else (error.get("code") or "payment_failed"),
            subscription_ref=str(ref) if ref else None, period_charge=charge,
            amount_minor=int(amount) if amount is not None else None,
            currency=str(obj.get("currency", "")).upper() or None,
        )  # fmt: skip
    return ProviderEvent(
        provider=NAME, event_id=str(event["id"]), outcome=None, provider_ref=None,
        event_type=event_type, subscription_ref=str(obj["id"]),
    )  # fmt: skip


def verify_signature(payload: bytes, header: str | None, secret: str, tolerance: int) -> None:
    """The relay's check of `Stripe-Signature`, with the SDK's verifier; Forged if it fails.

    The timestamp is read strictly first: exactly one `t=` element of plain ASCII digits
    (the SDK's `int()` would also take a sign, spaces, leading zeros or other scripts'
    digits, none of which Stripe sends). The SDK refuses only timestamps older than the
    tolerance; one further in the future than the same tolerance is refused here too (a
    replay window must not open forward because of a skewed or forged clock).
    """
    if not header:
        raise Forged("missing Stripe-Signature header")
    stamp = signature_timestamp(header)
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as error:
        raise Forged(f"bad Stripe signature: {error}") from None
    if stamp > time.time() + tolerance:
        raise Forged("Stripe-Signature timestamp is in the future")


_TIMESTAMP = re.compile(r"[1-9][0-9]{0,11}")  # seconds since 1970, up to the year 33658


def signature_timestamp(header: str) -> int:
    """The one `t=` element of a `Stripe-Signature` header, or Forged."""
    stamps = [part for part in header.split(",") if part.split("=", 1)[0].strip() == "t"]
    if len(stamps) != 1:
        raise Forged("Stripe-Signature needs exactly one timestamp")
    value = stamps[0].removeprefix("t=")
    if value == stamps[0] or not _TIMESTAMP.fullmatch(value):
        raise Forged("Stripe-Signature timestamp is not a plain number")
    return int(value)


def check_forwarded(body: bytes, headers: Mapping[str, Any], secret: str) -> None:
    """The worker's check of the `Stripe-Signature` the relay forwarded; Forged if it fails.

    No timestamp tolerance here: a callback may wait in the queue for a while, and a
    replayed genuine event is harmless (deduplicated, and re-read from Stripe).
    """
    header = signature_header(
        headers, names.PROVIDER_SIGNATURE_HEADER, "no Stripe-Signature came with the callback"
    )
    try:
        stripe.WebhookSignature.verify_header(body.decode(), header, secret)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as error:
        raise Forged(f"bad Stripe signature: {error}") from None
