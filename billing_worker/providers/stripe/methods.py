"""SetupIntents and PaymentMethods as billing reads them: a card saved off-session for
the user's customer, confirmed only by Stripe's own objects."""

from __future__ import annotations

from typing import Any

from billing_worker.db.payment_methods import Card
from billing_worker.providers.methods import ConfirmedSetup, SetupStarted

SETUP_SUCCEEDED = "setup_intent.succeeded"  # the webhook that tells of a saved method


def setup_params(customer_ref: str | None, user_id: str, setup_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "usage": "off_session",
        "automatic_payment_methods": {"enabled": True},
        "metadata": {"setup_id": setup_id, "user_id": user_id},
    }
    if customer_ref:
        params["customer"] = customer_ref
    return params


def started(setup_intent: dict[str, Any]) -> SetupStarted:
    return SetupStarted(str(setup_intent["id"]), client_secret=setup_intent.get("client_secret"))


def card_of(payment_method: dict[str, Any]) -> Card:
    card = payment_method.get("card") or {}
    return Card(card.get("brand"), card.get("last4"), card.get("exp_month"), card.get("exp_year"))


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def confirmed(setup_intent: dict[str, Any], payment_method: dict[str, Any]) -> ConfirmedSetup:
    metadata = setup_intent.get("metadata") or {}
    return ConfirmedSetup(
        ref=str(setup_intent["id"]),
        setup_id=metadata.get("setup_id"),
        user_id=metadata.get("user_id"),
        customer_ref=_ref(setup_intent.get("customer")),
        method_ref=str(payment_method["id"]),
        card=card_of(payment_method),
    )


def method_of(setup_intent: dict[str, Any]) -> str | None:
    """The PaymentMethod a succeeded SetupIntent saved; None while it is not succeeded."""
    if setup_intent.get("status") != "succeeded":
        return None
    return _ref(setup_intent.get("payment_method"))


def as_confirmation(setup: ConfirmedSetup) -> dict[str, Any]:
    """What Stripe answered about a setup, carried on the confirmed event."""
    return {
        "object": "setup_intent", "id": setup.ref, "status": "succeeded",
        "setup_id": setup.setup_id, "user_id": setup.user_id, "customer": setup.customer_ref,
        "payment_method": setup.method_ref, "brand": setup.card.brand, "last4": setup.card.last4,
        "exp_month": setup.card.exp_month, "exp_year": setup.card.exp_year,
    }  # fmt: skip
