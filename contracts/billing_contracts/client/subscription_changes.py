"""The calls of `BillingClient` that change a live subscription: resume, pause, unpause,
change-plan."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.plan_changes import ChangePlan, ChangeWhen, Proration
from billing_contracts.subscription_changes import (
    PauseSubscription,
    ResumeSubscription,
    UnpauseSubscription,
)
from billing_contracts.subscriptions import SubscriptionOut


class SubscriptionChangeCalls(RpcClient):
    """`billing.subscription.resume`, `.pause`, `.unpause`, `.change-plan`."""

    async def resume_subscription(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """Undo a period-end cancel. Errors: `NotFound` (also another user's),
        `InvalidState` (not canceling at the period end, or the period is over)."""
        command = ResumeSubscription(
            idempotency_key=idempotency_key, user_id=user_id, subscription_id=subscription_id
        )
        return await self.request(
            names.SUBSCRIPTION_RESUME, command, SubscriptionOut, timeout=timeout
        )

    async def pause_subscription(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        idempotency_key: str,
        until: datetime | None = None,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """Pause renewals (at the period end; Stripe at once). Errors: `NotFound`,
        `InvalidState` (not active, trialing or past due; pausing or canceling already)."""
        command = PauseSubscription(
            idempotency_key=idempotency_key,
            user_id=user_id,
            subscription_id=subscription_id,
            until=until,
        )
        return await self.request(
            names.SUBSCRIPTION_PAUSE, command, SubscriptionOut, timeout=timeout
        )

    async def unpause_subscription(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """Run a paused subscription again. Errors: `NotFound`, `InvalidState` (not
        paused), `InsufficientFunds` (a balance subscription's new period)."""
        command = UnpauseSubscription(
            idempotency_key=idempotency_key, user_id=user_id, subscription_id=subscription_id
        )
        return await self.request(
            names.SUBSCRIPTION_UNPAUSE, command, SubscriptionOut, timeout=timeout
        )

    async def change_plan(
        self,
        *,
        user_id: str,
        subscription_id: UUID | str,
        plan_code: str,
        idempotency_key: str,
        quantity: int | None = None,
        when: ChangeWhen | str = ChangeWhen.NOW,
        proration: Proration | str = Proration.PRORATE,
        coupon: str | None = None,
        timeout: float | None = None,
    ) -> SubscriptionOut:
        """Move a subscription to the current version of `plan_code` and/or `quantity`
        seats, now (prorated or not) or at the period end. Errors: `NotFound` (also another
        user's subscription, an unknown plan), `InvalidState` (not active or trialing;
        canceling, pausing or a payment in flight), `CurrencyMismatch`, `InsufficientFunds`
        (balance: the proration), `InvalidMessage` (nothing changes)."""
        command = ChangePlan(
            idempotency_key=idempotency_key, user_id=user_id, subscription_id=subscription_id,
            plan_code=plan_code, quantity=quantity, when=ChangeWhen(when),
            proration=Proration(proration), coupon=coupon,
        )  # fmt: skip
        return await self.request(
            names.SUBSCRIPTION_CHANGE_PLAN, command, SubscriptionOut, timeout=timeout
        )
