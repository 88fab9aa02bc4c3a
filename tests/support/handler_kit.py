"""What handler unit tests share: deps with a scripted gateway, funding, running a handler
in one fake transaction (rolled back when it raises, as the service's is)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from billing_contracts.money import Money
from billing_contracts.wallet import Deposit, DepositResult, Withdraw
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import wallet
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import (
    Gateways,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
)
from support.fake_uow import FakeDatabase

M = TypeVar("M")
R = TypeVar("R")


class ScriptedGateway:
    """A provider that is never called by the handlers under test (phase one and three
    run without it); phase two's answer is given to `finish_*` by the test itself."""

    needs_customer = False
    rereadable = False

    def __init__(self, name: str, *, trusts_method_ids: bool = False) -> None:
        self.name = name
        self.trusts_method_ids = trusts_method_ids

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        raise AssertionError("handlers do not call the provider")

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        raise AssertionError("handlers do not call the provider")

    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        raise AssertionError("handlers do not call the provider")

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        raise AssertionError("handlers do not call the provider")

    def parse_event(self, body: bytes) -> ProviderEvent:
        raise AssertionError("handlers do not call the provider")

    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        raise AssertionError("handlers do not call the provider")


def make_deps(threshold: str = "10") -> Deps:
    gateways = {
        "sandbox": ScriptedGateway("sandbox"),
        "yookassa": ScriptedGateway("yookassa", trusts_method_ids=True),
    }
    return Deps(
        gateways=Gateways(gateways, default="sandbox"), low_balance_threshold=Decimal(threshold)
    )


async def run(
    db: FakeDatabase,
    handler: Callable[[M, UnitOfWork, Deps], Awaitable[R]],
    message: M,
    deps: Deps,
) -> R:
    """One handler call in its own transaction, committed unless it raises."""
    async with db.transaction() as uow:
        return await handler(message, uow, deps)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    """Money as the wire (and the events' data) spell it."""
    return {"amount": amount, "currency": currency}


def wire(amount: str, currency: str = "USD") -> Money:
    """Money as a reply model holds it."""
    return Money(amount=amount, currency=currency)


async def deposit(
    db: FakeDatabase,
    deps: Deps,
    user: str,
    amount: str,
    currency: str = "USD",
    status: PaymentStatus = PaymentStatus.SUCCEEDED,
) -> DepositResult:
    """A deposit through its three phases, the provider answering `status`."""
    command = Deposit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money(amount, currency)}
    )
    intent = await run(db, wallet.deposit, command, deps)
    result = PaymentResult(f"pay_{intent.id.hex[:12]}", status, failure_code=None)
    async with db.transaction() as uow:
        return await wallet.finish_deposit(intent, wallet.Charged(result), uow, deps)


def withdrawal(user: str, amount: str, currency: str = "USD", **extra: Any) -> Withdraw:
    return Withdraw.model_validate(
        {
            "idempotency_key": key(),
            "user_id": user,
            "amount": money(amount, currency),
            "description": "test purchase",
            **extra,
        }
    )


async def balance_of(db: FakeDatabase, user: str, currency: str = "USD") -> int | None:
    """The balance in minor units as committed; None when the user has no such account."""
    async with db.transaction() as uow:
        found = dict(await uow.wallet.balances(user, currency))
    return found.get(currency)
