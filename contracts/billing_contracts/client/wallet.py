"""The wallet calls of `BillingClient`: deposits, withdrawals, balances, transactions."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.money import Money
from billing_contracts.wallet import (
    BalanceResult,
    Deposit,
    DepositResult,
    GetBalance,
    ListTransactions,
    Provider,
    TransactionPage,
    Withdraw,
    WithdrawResult,
)


class WalletCalls(RpcClient):
    """`billing.wallet.*`."""

    async def deposit(
        self,
        *,
        user_id: str,
        amount: Money,
        idempotency_key: str,
        provider: Provider | str | None = None,
        payment_method_id: str | None = None,
        return_url: str | None = None,
        timeout: float | None = None,
        customer_email: str | None = None,
        customer_phone: str | None = None,
    ) -> DepositResult:
        """`billing.wallet.deposit`: the transaction is `processing` until the provider
        confirms; `deposit.completed` follows. Errors: `ProviderError`; `InvalidMessage`
        with YooKassa receipts on and no `customer_email` / `customer_phone` to send one to."""
        command = Deposit(
            idempotency_key=idempotency_key,
            user_id=user_id,
            amount=amount,
            provider=provider,
            payment_method_id=payment_method_id,
            return_url=return_url,
            customer_email=customer_email,
            customer_phone=customer_phone,
        )
        return await self.request(names.WALLET_DEPOSIT, command, DepositResult, timeout=timeout)

    async def withdraw(
        self,
        *,
        user_id: str,
        amount: Money,
        description: str,
        idempotency_key: str,
        reference: str | None = None,
        timeout: float | None = None,
    ) -> WithdrawResult:
        """`billing.wallet.withdraw`. Errors: `InsufficientFunds` (`.balance`)."""
        command = Withdraw(
            idempotency_key=idempotency_key,
            user_id=user_id,
            amount=amount,
            description=description,
            reference=reference,
        )
        return await self.request(names.WALLET_WITHDRAW, command, WithdrawResult, timeout=timeout)

    async def balance(
        self, *, user_id: str, currency: str | None = None, timeout: float | None = None
    ) -> BalanceResult:
        """`billing.wallet.balance`: one account per currency (none before a deposit)."""
        query = GetBalance(user_id=user_id, currency=currency)
        return await self.request(names.WALLET_BALANCE, query, BalanceResult, timeout=timeout)

    async def transactions(
        self,
        *,
        user_id: str,
        currency: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        timeout: float | None = None,
    ) -> TransactionPage:
        """`billing.wallet.transactions`: newest first; pass `next_cursor` for the next page."""
        query = ListTransactions(user_id=user_id, currency=currency, limit=limit, cursor=cursor)
        return await self.request(
            names.WALLET_TRANSACTIONS, query, TransactionPage, timeout=timeout
        )
