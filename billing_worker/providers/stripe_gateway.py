"""Stripe: PaymentIntents for deposits, on the official SDK's async calls.

A webhook is a claim twice checked: its `Stripe-Signature` (forwarded by the relay) is
verified again here, and every event that moves money or changes a subscription is
re-read from Stripe's API (PaymentIntent, Charge, Invoice, Subscription); billing acts
on what the API returns, never on the event body.

Every POST carries an idempotency key derived from ours, so a redelivered command
finds the intent the first delivery created instead of creating a second one.
Network trouble, Stripe's 5xx/429, a 409 (a concurrent request with the same
idempotency key, as two deliveries of one command can make) and an idempotency error
(the key was used with other parameters: what Stripe made is unknown) are transient
(retried by the pipeline); any other Stripe error is `provider_error` with Stripe's
message, a refusal after which nothing exists at Stripe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import stripe

from billing_contracts import names
from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent, RefundFacts
from billing_worker.providers.base import (
    Forged,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    ProviderSubscription,
    signature_header,
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

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 20.0,
        webhook_secret: str | None = None,
    ) -> None:
        self._webhook_secret = webhook_secret
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
            return ProviderEvent(
                provider=self.name,
                event_id=str(event["id"]),
                outcome=outcome,
                provider_ref=str(ref) if ref else None,
                event_type=event_type,
                object_ref=str(obj["id"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed Stripe event: {error}") from error

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Check the `Stripe-Signature` the relay forwarded (the relay checked it too).

        No timestamp tolerance here: a callback may wait in the queue for a while, and
        a replayed genuine event is harmless (deduplicated, and re-read from Stripe).
        """
        if not self._webhook_secret:
            return  # nothing to check against; every event is still re-read from Stripe
        header = signature_header(
            headers, names.PROVIDER_SIGNATURE_HEADER, "no Stripe-Signature came with the callback"
        )
        try:
            stripe.WebhookSignature.verify_header(body.decode(), header, self._webhook_secret)
        except (stripe.SignatureVerificationError, UnicodeDecodeError) as error:
            raise Forged(f"bad Stripe signature: {error}") from None

    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        try:
            if claim.event_type in SUBSCRIPTION_EVENTS:
                return await self._confirm_subscription_event(claim)
            if claim.outcome is PaymentOutcome.REFUNDED:
                return await self._confirm_refund(claim)
            if claim.outcome is not None and claim.provider_ref:
                return await self._confirm_payment(claim)
        except ProviderError:  # e.g. 404: Stripe knows no such object
            return None
        return claim if claim.outcome is None else None  # an event type billing ignores

    async def _confirm_payment(self, claim: ProviderEvent) -> ProviderEvent | None:
        assert claim.provider_ref is not None
        intent = await self._retrieve(self._client.v1.payment_intents, claim.provider_ref)
        outcome = _intent_outcome(intent, claim.outcome)
        if outcome is None:
            return None
        result = _result_of(intent)
        return dataclasses.replace(
            claim, outcome=outcome, provider_ref=str(intent["id"]),
            failure_code=result.failure_code, failure_message=result.failure_message,
            amount_minor=result.amount_minor, currency=result.currency,
            transaction_ref=result.transaction_ref, saved_method_ref=None,
            confirmation=dict(result.confirmation or {}),
        )  # fmt: skip

    async def _confirm_refund(self, claim: ProviderEvent) -> ProviderEvent | None:
        """`charge.refunded`: the charge's running refunded total is the truth."""
        if not claim.object_ref or not claim.object_ref.startswith("ch_"):
            return None
        charge = await self._retrieve(self._client.v1.charges, claim.object_ref)
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

    async def _confirm_subscription_event(self, claim: ProviderEvent) -> ProviderEvent | None:
        if not claim.event_type.startswith("invoice."):
            # The subscription itself is re-read when the event is applied.
            await self._retrieve(self._client.v1.subscriptions, str(claim.subscription_ref))
            return claim
        invoice = await self._retrieve(self._client.v1.invoices, str(claim.provider_ref))
        paid = claim.event_type == "invoice.paid"
        status = str(invoice.get("status"))
        if (paid and status != "paid") or (not paid and status not in ("open", "uncollectible")):
            return None
        parent = (invoice.get("parent") or {}).get("subscription_details") or {}
        subscription = parent.get("subscription") or invoice.get("subscription")
        if not subscription:
            return None
        amount = int(invoice["amount_paid"] if paid else invoice["amount_due"])
        currency = str(invoice["currency"]).upper()
        return dataclasses.replace(
            claim, subscription_ref=str(subscription), amount_minor=amount, currency=currency,
            confirmation={
                "object": "invoice", "id": str(invoice["id"]), "status": status,
                "amount_minor": amount, "currency": currency,
            },
        )  # fmt: skip

    async def _retrieve(self, service: Any, object_id: str) -> dict[str, Any]:
        found = await _call(service.retrieve_async(object_id))
        return found.to_dict()  # type: ignore[no-any-return]


async def _call(call: Any) -> Any:
    """Await an SDK call, sorting Stripe's errors into transient and final ones."""
    try:
        return await call
    except stripe.CardError:
        raise
    except (stripe.APIConnectionError, stripe.RateLimitError) as error:
        raise TransientError(f"Stripe unavailable: {error.user_message or error}") from None
    except stripe.IdempotencyError as error:
        # Our key names a request Stripe ran with other parameters: what it made is not
        # known from here, so this is no refusal to undo the payment on. Left for an
        # operator (the intent stays; the reconciler keeps reporting it).
        raise TransientError(f"Stripe idempotency error: {error.user_message or error}") from None
    except stripe.StripeError as error:
        if error.http_status == 409:  # the same idempotency key is in use right now
            raise TransientError(f"Stripe conflict: {error.user_message or error}") from None
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
    return _result_of(payment_intent.to_dict())


def _result_of(intent: dict[str, Any]) -> PaymentResult:
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
