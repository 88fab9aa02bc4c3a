"""The Stripe gateway: PaymentIntents for deposits, on the official SDK's async calls.

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
from collections.abc import Mapping
from typing import Any

import stripe

from billing_contracts.subscriptions import SubscriptionStatus
from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.providers.base import (
    PaymentRequest,
    PaymentResult,
    ProviderSubscription,
    RefundRequest,
    RefundResult,
    SubscriptionChange,
)
from billing_worker.providers.methods import ConfirmedSetup, SetupStarted
from billing_worker.providers.observed import observed
from billing_worker.providers.stripe import (
    NAME,
    methods,
    payments,
    refunds,
    subscriptions,
    webhook,
)


class StripeGateway:
    name = NAME
    needs_customer = True
    # Stripe refuses a PaymentMethod attached to another customer, and the worker always
    # passes this user's customer.
    trusts_method_ids = False
    rereadable = True

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

    @observed("create_customer")
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

    @observed("create_payment")
    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        params = payments.intent_params(request)
        options = {"idempotency_key": f"pi-{request.idempotency_key}"}
        try:
            intent = await _call(
                self._client.v1.payment_intents.create_async(params, options)  # type: ignore[arg-type]
            )
        except stripe.CardError as declined:
            return payments.declined(declined)
        return payments.result(intent)

    @observed("fetch_payment")
    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        found = await _call(self._client.v1.payment_intents.retrieve_async(provider_ref))
        return payments.result(found)

    @observed("cancel_payment")
    async def cancel_payment(self, provider_ref: str, idempotency_key: str) -> PaymentResult:
        """Cancel the PaymentIntent; one Stripe no longer lets cancel (it succeeded, or was
        canceled before) is re-read and reported as it is."""
        options = {"idempotency_key": f"pi-cancel-{idempotency_key}"}
        try:
            canceled = await _call(
                self._client.v1.payment_intents.cancel_async(provider_ref, {}, options)  # type: ignore[arg-type]
            )
        except ProviderError:  # e.g. payment_intent_unexpected_state: re-read what it is
            canceled = await _call(self._client.v1.payment_intents.retrieve_async(provider_ref))
        return payments.cancel_result(canceled.to_dict())

    @observed("create_subscription")
    async def create_subscription(
        self,
        *,
        customer_ref: str,
        price_ref: str,
        payment_method_id: str | None,
        trial_days: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
        quantity: int = 1,
        coupon_ref: str | None = None,
    ) -> ProviderSubscription:
        params = subscriptions.subscription_params(
            customer_ref=customer_ref, price_ref=price_ref, payment_method_id=payment_method_id,
            trial_days=trial_days, metadata=metadata, quantity=quantity, coupon_ref=coupon_ref,
        )  # fmt: skip
        created = await _call(
            self._client.v1.subscriptions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": f"sub-{idempotency_key}"},
            )
        )
        return subscriptions.subscription(created)

    @observed("cancel_subscription")
    async def cancel_subscription(self, ref: str, *, at_period_end: bool) -> ProviderSubscription:
        if at_period_end:
            updated = await _call(
                self._client.v1.subscriptions.update_async(ref, {"cancel_at_period_end": True})
            )
        else:
            updated = await _call(self._client.v1.subscriptions.cancel_async(ref))
        return subscriptions.subscription(updated)

    @observed("change_subscription")
    async def change_subscription(
        self, ref: str, change: SubscriptionChange
    ) -> ProviderSubscription:
        if change.action == "change_plan":  # its (first) item onto the new price
            found = await _call(self._client.v1.subscriptions.retrieve_async(ref))
            params = subscriptions.plan_change_params(change, found.to_dict())
            options = {"idempotency_key": f"sub-plan-{change.idempotency_key}"}
            try:
                updated = await _call(
                    self._client.v1.subscriptions.update_async(ref, params, options)  # type: ignore[arg-type]
                )
            except stripe.CardError as error:  # the proration declined: nothing changed
                raise ProviderError(
                    f"Stripe declined the proration: {error.user_message or error}",
                    stripe_code=error.code,
                ) from None
            return subscriptions.subscription(updated)
        params = subscriptions.change_params(change)
        updated = await _call(self._client.v1.subscriptions.update_async(ref, params))  # type: ignore[arg-type]
        return subscriptions.subscription(updated)

    @observed("fetch_subscription")
    async def fetch_subscription(self, ref: str) -> ProviderSubscription:
        found = await _call(self._client.v1.subscriptions.retrieve_async(ref))
        return subscriptions.subscription(found)

    def subscription_status(self, status: str) -> SubscriptionStatus | None:
        return subscriptions.STATUS.get(status)

    def parse_event(self, body: bytes) -> ProviderEvent:
        return webhook.parse_event(body)

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Check the `Stripe-Signature` the relay forwarded (the relay checked it too)."""
        if not self._webhook_secret:
            return  # nothing to check against; every event is still re-read from Stripe
        webhook.check_forwarded(body, headers, self._webhook_secret)

    @observed("confirm")
    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        try:
            if claim.event_type == methods.SETUP_SUCCEEDED:
                return await self._confirm_setup_event(claim)
            if claim.event_type in webhook.SUBSCRIPTION_EVENTS:
                return await self._confirm_subscription_event(claim)
            if claim.outcome is PaymentOutcome.REFUNDED:
                return await self._confirm_refund(claim)
            if claim.outcome is not None and claim.provider_ref:
                intent = await self._retrieve(self._client.v1.payment_intents, claim.provider_ref)
                return payments.confirmed_payment(claim, intent)
        except ProviderError:  # e.g. 404: Stripe knows no such object
            return None
        return claim if claim.outcome is None else None  # an event type billing ignores

    async def _confirm_setup_event(self, claim: ProviderEvent) -> ProviderEvent | None:
        """The SetupIntent and its PaymentMethod as Stripe has them (never the body's)."""
        setup = await self.confirm_setup(claim.object_ref) if claim.object_ref else None
        if setup is None:
            return None
        return dataclasses.replace(
            claim, saved_method_ref=setup.method_ref, confirmation=methods.as_confirmation(setup)
        )

    async def _confirm_refund(self, claim: ProviderEvent) -> ProviderEvent | None:
        if not claim.object_ref or not claim.object_ref.startswith("ch_"):
            return None
        charge = await self._retrieve(self._client.v1.charges, claim.object_ref)
        return payments.confirmed_refund(claim, charge)

    async def _confirm_subscription_event(self, claim: ProviderEvent) -> ProviderEvent | None:
        if not claim.event_type.startswith("invoice."):
            # The subscription itself is re-read when the event is applied.
            await self._retrieve(self._client.v1.subscriptions, str(claim.subscription_ref))
            return claim
        invoice = await self._retrieve(self._client.v1.invoices, str(claim.provider_ref))
        return subscriptions.confirmed_invoice(claim, invoice)

    @observed("refund")
    async def refund(self, request: RefundRequest) -> RefundResult:
        params = refunds.refund_params(request)
        options = {"idempotency_key": f"re-{request.idempotency_key}"}
        made = await _call(self._client.v1.refunds.create_async(params, options))  # type: ignore[arg-type]
        return refunds.refund_result(made.to_dict())

    @observed("fetch_refund")
    async def fetch_refund(self, ref: str) -> RefundResult:
        return refunds.refund_result(await self._retrieve(self._client.v1.refunds, ref))

    # Saved payment methods (providers/methods.py): SetupIntents and PaymentMethods.
    @observed("start_setup")
    async def start_setup(
        self, *, customer_ref: str | None, user_id: str, setup_id: str,
        return_url: str | None, idempotency_key: str, receipt: Mapping[str, Any] | None = None,
    ) -> SetupStarted:  # fmt: skip
        params = methods.setup_params(customer_ref, user_id, setup_id)
        options = {"idempotency_key": f"seti-{idempotency_key}"}
        created = await _call(self._client.v1.setup_intents.create_async(params, options))  # type: ignore[arg-type]
        return methods.started(created.to_dict())

    @observed("confirm_setup")
    async def confirm_setup(self, ref: str) -> ConfirmedSetup | None:
        try:
            setup_intent = await self._retrieve(self._client.v1.setup_intents, ref)
            method = methods.method_of(setup_intent)
            if method is None:
                return None
            payment_method = await self._retrieve(self._client.v1.payment_methods, method)
        except ProviderError:  # e.g. 404: Stripe knows no such SetupIntent
            return None
        return methods.confirmed(setup_intent, payment_method)

    @observed("detach_method")
    async def detach_method(self, ref: str) -> None:
        try:
            await _call(self._client.v1.payment_methods.detach_async(ref))
        except ProviderError:  # detached before (a redelivery): done, as Stripe says
            found = await self._retrieve(self._client.v1.payment_methods, ref)
            if found.get("customer"):
                raise

    @observed("make_default")
    async def make_default(self, customer_ref: str | None, ref: str) -> None:
        if customer_ref:
            params = {"invoice_settings": {"default_payment_method": ref}}
            await _call(self._client.v1.customers.update_async(customer_ref, params))  # type: ignore[arg-type]

    @observed("set_subscription_method")
    async def set_subscription_method(self, subscription_ref: str, ref: str) -> None:
        params = {"default_payment_method": ref}
        await _call(self._client.v1.subscriptions.update_async(subscription_ref, params))  # type: ignore[arg-type]

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
