"""Stripe: PaymentIntents for deposits, on the official SDK's async calls.

Every POST carries an idempotency key derived from ours, so a redelivered command
finds the intent the first delivery created instead of creating a second one.
Network trouble and Stripe's 5xx/429 are transient (retried by the pipeline); any
other Stripe error is `provider_error` with Stripe's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import stripe

from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.base import (
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    ProviderSubscription,
)

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
_EVENTS = {
    "payment_intent.succeeded": PaymentOutcome.SUCCEEDED,
    "payment_intent.payment_failed": PaymentOutcome.FAILED,
    "payment_intent.canceled": PaymentOutcome.CANCELED,
    "charge.refunded": PaymentOutcome.REFUNDED,
}
# Events about Stripe-run subscriptions: the worker re-reads the subscription on each.
SUBSCRIPTION_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_failed",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
# Stripe amounts are in the currency's smallest unit like ours, except for a few
# currencies Stripe treats specially; refuse those rather than charge a wrong amount.
UNSUPPORTED_CURRENCIES = frozenset({"HUF", "TWD", "ISK", "UGX"})


class StripeGateway:
    name = "stripe"
    needs_customer = True

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            http_client=self._http,
            max_network_retries=0,  # the pipeline retries, with back-off and a limit
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        params: dict[str, Any] = {"metadata": {"user_id": user_id}}
        if email:
            params["email"] = email
        customer = await _call(
            self._client.v1.customers.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        )
        return str(customer.id)

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
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
        options = {"idempotency_key": f"pi-{request.idempotency_key}"}
        try:
            intent = await _call(
                self._client.v1.payment_intents.create_async(params, options)  # type: ignore[arg-type]
            )
        except stripe.CardError as declined:
            return _declined(declined)
        return _result(intent)

    async def create_subscription(
        self,
        *,
        customer_ref: str,
        price_ref: str,
        payment_method_id: str | None,
        trial_days: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> ProviderSubscription:
        params: dict[str, Any] = {
            "customer": customer_ref,
            "items": [{"price": price_ref}],
            "metadata": dict(metadata),
            "expand": ["latest_invoice.confirmation_secret"],
            # Without a saved method the first invoice waits for the customer (Stripe.js).
            "payment_behavior": "allow_incomplete" if payment_method_id else "default_incomplete",
        }
        if payment_method_id:
            params["default_payment_method"] = payment_method_id
        if trial_days:
            params["trial_period_days"] = trial_days
        created = await _call(
            self._client.v1.subscriptions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": f"sub-{idempotency_key}"},
            )
        )
        return _subscription(created)

    async def cancel_subscription(self, ref: str, *, at_period_end: bool) -> ProviderSubscription:
        if at_period_end:
            updated = await _call(
                self._client.v1.subscriptions.update_async(ref, {"cancel_at_period_end": True})
            )
        else:
            updated = await _call(self._client.v1.subscriptions.cancel_async(ref))
        return _subscription(updated)

    async def fetch_subscription(self, ref: str) -> ProviderSubscription:
        return _subscription(await _call(self._client.v1.subscriptions.retrieve_async(ref)))

    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        return _result(await _call(self._client.v1.payment_intents.retrieve_async(provider_ref)))

    def parse_event(self, body: bytes) -> ProviderEvent:
        try:
            event = json.loads(body)
            event_type = str(event["type"])
            obj = event["data"]["object"]
            outcome = _EVENTS.get(event_type)
            ref = obj.get("payment_intent") if event_type.startswith("charge.") else obj.get("id")
            if event_type in SUBSCRIPTION_EVENTS:
                return _subscription_event(event, obj)
            error = obj.get("last_payment_error") or {}
            return ProviderEvent(
                provider=self.name,
                event_id=str(event["id"]),
                outcome=outcome,
                provider_ref=str(ref) if ref else None,
                event_type=event_type,
                failure_code=error.get("decline_code") or error.get("code"),
                failure_message=error.get("message"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed Stripe event: {error}") from error

    async def verify_event(self, event: ProviderEvent) -> bool:
        return True  # the relay verified the signature before the event reached the queue


async def _call(call: Any) -> Any:
    """Await an SDK call, sorting Stripe's errors into transient and final ones."""
    try:
        return await call
    except stripe.CardError:
        raise
    except (stripe.APIConnectionError, stripe.RateLimitError) as error:
        raise TransientError(f"Stripe unavailable: {error.user_message or error}") from None
    except stripe.StripeError as error:
        if error.http_status is not None and error.http_status >= 500:
            raise TransientError(
                f"Stripe error {error.http_status}: {error.user_message}"
            ) from None
        raise ProviderError(
            f"Stripe refused the request: {error.user_message or error}",
            stripe_code=error.code,
        ) from None


_NEEDS_CUSTOMER = ("requires_payment_method", "requires_action", "requires_confirmation")


def _result(payment_intent: Any) -> PaymentResult:
    intent: dict[str, Any] = payment_intent.to_dict()
    status = _STATUS.get(intent["status"], PaymentStatus.PENDING)
    action = None
    if intent["status"] in _NEEDS_CUSTOMER:
        action = {"type": "client_secret", "client_secret": intent.get("client_secret")}
    error = intent.get("last_payment_error") or {}
    return PaymentResult(
        provider_ref=str(intent["id"]),
        status=status,
        action=action,
        failure_code=(error.get("decline_code") or error.get("code")) if error else None,
        failure_message=error.get("message") if error else None,
    )


def _declined(declined: stripe.CardError) -> PaymentResult:
    body: dict[str, Any] = declined.json_body if isinstance(declined.json_body, dict) else {}
    error = body.get("error") or {}
    intent = error.get("payment_intent") or {}
    return PaymentResult(
        provider_ref=str(intent.get("id") or f"declined:{error.get('request_log_url', '')}"),
        status=PaymentStatus.FAILED,
        failure_code=error.get("decline_code") or declined.code,
        failure_message=error.get("message") or declined.user_message,
    )


def _subscription_event(event: dict[str, Any], obj: dict[str, Any]) -> ProviderEvent:
    event_type = str(event["type"])
    if event_type.startswith("invoice."):
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        ref = parent.get("subscription") or obj.get("subscription")
        amount = obj.get("amount_paid") if event_type == "invoice.paid" else obj.get("amount_due")
        failed = event_type == "invoice.payment_failed"
        error = (obj.get("last_finalization_error") or {}) if failed else {}
        return ProviderEvent(
            provider="stripe", event_id=str(event["id"]), outcome=None,
            provider_ref=str(obj["id"]), event_type=event_type,
            failure_code=error.get("code") or ("payment_failed" if failed else None),
            subscription_ref=str(ref) if ref else None,
            amount_minor=int(amount) if amount is not None else None,
            currency=str(obj.get("currency", "")).upper() or None,
        )  # fmt: skip
    return ProviderEvent(
        provider="stripe", event_id=str(event["id"]), outcome=None, provider_ref=None,
        event_type=event_type, subscription_ref=str(obj["id"]),
    )  # fmt: skip


def _subscription(subscription: Any) -> ProviderSubscription:
    sub: dict[str, Any] = subscription.to_dict()
    items = (sub.get("items") or {}).get("data") or [{}]
    start, end = items[0].get("current_period_start"), items[0].get("current_period_end")
    invoice = sub.get("latest_invoice")
    secret = None
    if isinstance(invoice, dict):
        secret = (invoice.get("confirmation_secret") or {}).get("client_secret")
    return ProviderSubscription(
        ref=str(sub["id"]),
        status=str(sub["status"]),
        period_start=datetime.fromtimestamp(start, UTC) if start else None,
        period_end=datetime.fromtimestamp(end, UTC) if end else None,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        client_secret=secret if sub["status"] == "incomplete" else None,
    )
