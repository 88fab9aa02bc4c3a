"""The refund call of `BillingClient`."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.money import Money
from billing_contracts.refunds import RefundDestination, RefundPayment, RefundResult


class RefundCalls(RpcClient):
    """`billing.payment.refund`."""

    async def refund_payment(
        self,
        *,
        user_id: str,
        transaction_id: UUID | str,
        destination: RefundDestination | str,
        idempotency_key: str,
        amount: Money | None = None,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> RefundResult:
        """`billing.payment.refund`: `amount` defaults to all that is left. The refund is
        `completed`, or `processing` until the provider confirms (`payment.refunded`
        follows). Errors: `NotFound`, `InsufficientFunds`, `InvalidState`,
        `CurrencyMismatch`, `ProviderError`."""
        command = RefundPayment.model_validate(
            {
                "idempotency_key": idempotency_key,
                "user_id": user_id,
                "transaction_id": str(transaction_id),
                "destination": str(destination),
                "amount": amount,
                "reason": reason,
            }
        )
        return await self.request(names.PAYMENT_REFUND, command, RefundResult, timeout=timeout)
