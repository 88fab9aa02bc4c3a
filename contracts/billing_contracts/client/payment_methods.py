"""The saved payment method calls of `BillingClient`: setup, list, detach, set-default,
and a subscription's method."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.payment_methods import (
    DetachPaymentMethod,
    ListPaymentMethods,
    PaymentMethodList,
    PaymentMethodOut,
    SetDefaultPaymentMethod,
    SetupPaymentMethod,
    SetupResult,
    UpdateSubscriptionPaymentMethod,
)
from billing_contracts.subscriptions import SubscriptionOut
from billing_contracts.wallet import Provider


class PaymentMethodCalls(RpcClient):
    """`billing.payment-method.*` and `billing.subscription.update-payment-method`."""

    async def setup_payment_method(
        self, *, user_id: str, provider: Provider | str, idempotency_key: str,
        return_url: str | None = None, timeout: float | None = None,
    ) -> SetupResult:  # fmt: skip
        """`billing.payment-method.setup`. Errors: `ProviderError`."""
        command = SetupPaymentMethod(
            idempotency_key=idempotency_key, user_id=user_id, provider=Provider(provider),
            return_url=return_url,
        )  # fmt: skip
        return await self.request(names.PAYMENT_METHOD_SETUP, command, SetupResult,
                                  timeout=timeout)  # fmt: skip

    async def list_payment_methods(
        self, *, user_id: str, provider: Provider | str | None = None,
        timeout: float | None = None,
    ) -> PaymentMethodList:  # fmt: skip
        """`billing.payment-method.list`."""
        query = ListPaymentMethods(user_id=user_id,
                                   provider=Provider(provider) if provider else None)  # fmt: skip
        return await self.request(names.PAYMENT_METHOD_LIST, query, PaymentMethodList,
                                  timeout=timeout)  # fmt: skip

    async def detach_payment_method(
        self, *, user_id: str, provider: Provider | str, payment_method_id: str,
        idempotency_key: str, timeout: float | None = None,
    ) -> PaymentMethodOut:  # fmt: skip
        """`billing.payment-method.detach`. Errors: `NotFound`, `ProviderError`."""
        command = DetachPaymentMethod(idempotency_key=idempotency_key, user_id=user_id,
                                      provider=Provider(provider),
                                      payment_method_id=payment_method_id)  # fmt: skip
        return await self.request(names.PAYMENT_METHOD_DETACH, command, PaymentMethodOut,
                                  timeout=timeout)  # fmt: skip

    async def set_default_payment_method(
        self, *, user_id: str, provider: Provider | str, payment_method_id: str,
        idempotency_key: str, timeout: float | None = None,
    ) -> PaymentMethodOut:  # fmt: skip
        """`billing.payment-method.set-default`. Errors: `NotFound`, `ProviderError`."""
        command = SetDefaultPaymentMethod(idempotency_key=idempotency_key, user_id=user_id,
                                          provider=Provider(provider),
                                          payment_method_id=payment_method_id)  # fmt: skip
        return await self.request(names.PAYMENT_METHOD_SET_DEFAULT, command, PaymentMethodOut,
                                  timeout=timeout)  # fmt: skip

    async def update_subscription_payment_method(
        self, *, user_id: str, subscription_id: UUID | str, payment_method_id: str,
        idempotency_key: str, timeout: float | None = None,
    ) -> SubscriptionOut:  # fmt: skip
        """`billing.subscription.update-payment-method`. Errors: `NotFound`, `InvalidState`,
        `ProviderError`."""
        command = UpdateSubscriptionPaymentMethod(
            idempotency_key=idempotency_key, user_id=user_id,
            subscription_id=UUID(str(subscription_id)), payment_method_id=payment_method_id,
        )  # fmt: skip
        return await self.request(names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD, command,
                                  SubscriptionOut, timeout=timeout)  # fmt: skip
