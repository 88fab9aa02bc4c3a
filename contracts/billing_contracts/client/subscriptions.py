"""The subscription calls of `BillingClient`: create, cancel, get and list subscriptions."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    PaymentSource,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
)


class SubscriptionCalls(RpcClient):
    """`billing.subscription.*`."""

    async def create_subscription(
        self,
        *,
        user_id: str,
        plan_code: str,
        payment_source: PaymentSource | str,
        idempotency_key: str,
        email: str | None = None,
        payment_method_id: str | None = None,
        return_url: str | None = None,
        quantity: int = 1,
        coupon: str | None = None,
        timeout: float | None = None,
    ) -> SubscriptionCreated:
        """`billing.subscription.create`, with `coupon` off its charged periods while it
        lasts. Errors: `NotFound` (no active plan; an unknown coupon), `InsufficientFunds`
        (balance), `InvalidState` (already subscribed; an inactive coupon),
        `CurrencyMismatch` (an amount-off coupon in another currency), `ProviderError`."""
        command = CreateSubscription(
            idempotency_key=idempotency_key,
            user_id=user_id,
            email=email,
            plan_code=plan_code,
            payment_source=payment_source,
            payment_method_id=payment_method_id,
            return_url=return_url,
            quantity=quantity,
            coupon=coupon,
        )
        return await self.request(
            names.SUBSCRIPTION_CREATE, command, SubscriptionCreated, timeout=timeout
        )

    async def cancel_subscription(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        idempotency_key: str,
        at_period_end: bool = True,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """`billing.subscription.cancel` of one of the user's subscriptions. Errors:
        `NotFound` (no such subscription of this user), `InvalidState` (ended)."""
        command = CancelSubscription(
            idempotency_key=idempotency_key,
            user_id=user_id,
            subscription_id=subscription_id,
            at_period_end=at_period_end,
            reason=reason,
        )
        return await self.request(
            names.SUBSCRIPTION_CANCEL, command, SubscriptionOut, timeout=timeout
        )

    async def get_subscription(
        self, *, user_id: str, subscription_id: UUID | str, timeout: float | None = None
    ) -> SubscriptionOut:
        """`billing.subscription.get` by id. Errors: `NotFound` (also another user's)."""
        query = GetSubscriptions(user_id=user_id, subscription_id=subscription_id)
        return await self.request(names.SUBSCRIPTION_GET, query, SubscriptionOut, timeout=timeout)

    async def list_subscriptions(
        self, *, user_id: str, timeout: float | None = None
    ) -> SubscriptionList:
        """`billing.subscription.get` by user: all of the user's subscriptions."""
        query = GetSubscriptions(user_id=user_id)
        return await self.request(names.SUBSCRIPTION_GET, query, SubscriptionList, timeout=timeout)
