"""The hold and credit calls of `BillingClient`: place, capture and release holds, and
grant credits (admins only)."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.holds import (
    CaptureHold,
    CaptureResult,
    CreditResult,
    GrantCredit,
    HoldResult,
    PlaceHold,
    ReleaseHold,
)
from billing_contracts.money import Money


class HoldCalls(RpcClient):
    """`billing.wallet.hold*` and `billing.wallet.credit`."""

    async def hold(
        self,
        *,
        user_id: str,
        amount: Money,
        expires_in_seconds: int,
        idempotency_key: str,
        reference: str | None = None,
        timeout: float | None = None,
    ) -> HoldResult:
        """`billing.wallet.hold`: reserve `amount` until captured, released or expired.
        Errors: `InsufficientFunds` (`.balance`; `details.available`)."""
        command = PlaceHold(
            idempotency_key=idempotency_key, user_id=user_id, amount=amount,
            expires_in_seconds=expires_in_seconds, reference=reference,
        )  # fmt: skip
        return await self.request(names.WALLET_HOLD, command, HoldResult, timeout=timeout)

    async def capture_hold(
        self,
        *,
        user_id: str,
        hold_id: UUID | str,
        idempotency_key: str,
        amount: Money | None = None,
        timeout: float | None = None,
    ) -> CaptureResult:
        """`billing.wallet.hold.capture` of (part of) an open hold. Errors: `NotFound` (also
        another user's), `InvalidState` (not open, or expired), `CurrencyMismatch`,
        `InvalidMessage` (more than the hold)."""
        command = CaptureHold(
            idempotency_key=idempotency_key, user_id=user_id, hold_id=hold_id, amount=amount
        )
        return await self.request(
            names.WALLET_HOLD_CAPTURE, command, CaptureResult, timeout=timeout
        )

    async def release_hold(
        self,
        *,
        user_id: str,
        hold_id: UUID | str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> HoldResult:
        """`billing.wallet.hold.release` of an open hold. Errors: `NotFound`, `InvalidState`."""
        command = ReleaseHold(idempotency_key=idempotency_key, user_id=user_id, hold_id=hold_id)
        return await self.request(names.WALLET_HOLD_RELEASE, command, HoldResult, timeout=timeout)

    async def credit(
        self,
        *,
        user_id: str,
        amount: Money,
        reason: str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> CreditResult:
        """`billing.wallet.credit` (only a broker user the access policy names for it).
        Errors: `Forbidden`."""
        command = GrantCredit(
            idempotency_key=idempotency_key, user_id=user_id, amount=amount, reason=reason
        )
        return await self.request(names.WALLET_CREDIT, command, CreditResult, timeout=timeout)
