"""The deposit-cancel call of `BillingClient`."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from uuid import UUID

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.deposit_cancel import CancelDeposit, CancelDepositResult


class DepositCancelCalls(RpcClient):
    """`billing.wallet.deposit.cancel`."""

    async def cancel_deposit(
        self,
        *,
        user_id: str,
        transaction_id: UUID | str,
        idempotency_key: str,
        timeout: float | None = None,
    ) -> CancelDepositResult:
        """`billing.wallet.deposit.cancel`: the deposit as it now is (`canceled`,
        `completed` if the customer paid first, `processing` if the provider cannot cancel
        it yet). Errors: `NotFound`, `InvalidState`, `ProviderError`."""
        command = CancelDeposit(
            idempotency_key=idempotency_key,
            user_id=user_id,
            transaction_id=UUID(str(transaction_id)),
        )
        return await self.request(
            names.WALLET_DEPOSIT_CANCEL, command, CancelDepositResult, timeout=timeout
        )
