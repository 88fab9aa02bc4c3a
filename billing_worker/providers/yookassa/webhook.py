"""YooKassa's notifications: the body, and the networks they may come from.

A notification carries no signature: it is only a claim. The relay accepts it only
from YooKassa's published networks (or those configured instead), and the worker acts
only on the payment or refund it names as re-read from YooKassa (see `gateway`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.yookassa import NAME

# YooKassa's published notification sources: the default of
# BILLING_YOOKASSA_ALLOWED_NETWORKS.
PUBLISHED_NETWORKS = (
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.154.128/25",
    "77.75.156.11/32",
    "77.75.156.35/32",
    "2a02:5180::/32",
)

EVENTS = {
    "payment.succeeded": PaymentOutcome.SUCCEEDED,
    "payment.canceled": PaymentOutcome.FAILED,  # YooKassa's only way a payment fails
    "refund.succeeded": PaymentOutcome.REFUNDED,
}
# a card setup's payment held by YooKassa (providers/yookassa/setup.py): no outcome
SETUP_EVENTS = frozenset({"payment.waiting_for_capture"})
EVENT_TYPES = frozenset({*EVENTS, *SETUP_EVENTS})  # the ones billing acts on


def sources(configured: Sequence[str] | None) -> tuple[str, ...]:
    """The CIDRs notifications may come from: those configured, else the published ones."""
    return PUBLISHED_NETWORKS if configured is None else tuple(configured)


def event_id(body: bytes) -> str:
    """The id the relay publishes a notification under (the worker's event id too);
    ValueError, KeyError, TypeError or AttributeError when it is no notification."""
    notification = json.loads(body)
    if notification.get("type") != "notification":
        raise ValueError("not a notification")
    return _event_id(notification["event"], notification["object"]["id"])


def _event_id(event_type: object, object_id: object) -> str:
    # YooKassa notifications have no id; an object reaches each state once.
    return f"{event_type}:{object_id}"


def parse_event(body: bytes) -> ProviderEvent:
    """The claim a notification makes; ValueError when malformed."""
    try:
        notification = json.loads(body)
        event_type = str(notification["event"])
        obj = notification["object"]
        object_id = str(obj["id"])
        refund = event_type.startswith("refund.")
        cancellation = obj.get("cancellation_details") or {}
        return ProviderEvent(
            provider=NAME,
            event_id=_event_id(event_type, object_id),
            outcome=EVENTS.get(event_type),
            provider_ref=str(obj["payment_id"]) if refund else object_id,
            event_type=event_type,
            failure_code=cancellation.get("reason"),
            failure_message=cancellation.get("party"),
            object_ref=object_id,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed YooKassa notification: {error}") from error
