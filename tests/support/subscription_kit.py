"""Plans, funded users and balance subscriptions over the bus: the set-up the
subscription and invoice integration tests share."""

from __future__ import annotations

import uuid
from typing import Any

from support.rpc import Bus


def key() -> str:
    return uuid.uuid4().hex


async def plan(bus: Bus, price: str = "10.00", currency: str = "USD", **terms: Any) -> str:
    """A new monthly plan (a code of its own) at `price`; its code."""
    code = f"plan-{uuid.uuid4().hex[:8]}"
    reply = await bus.call(
        "billing.plan.upsert",
        {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
         "price": {"amount": price, "currency": currency}, **terms},
    )  # fmt: skip
    assert reply["ok"], reply
    return code


async def fund(bus: Bus, user: str, amount: str, currency: str = "USD") -> None:
    """Deposit `amount` (the sandbox completes it) and wait until it is credited."""
    reply = await bus.call(
        "billing.wallet.deposit",
        {"idempotency_key": key(), "user_id": user,
         "amount": {"amount": amount, "currency": currency}},
    )  # fmt: skip
    transaction_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)


async def subscribe(bus: Bus, user: str, code: str, **extra: Any) -> dict[str, Any]:
    """A balance subscription of `user` to `code` (must succeed); the subscription."""
    reply = await bus.call(
        "billing.subscription.create",
        {"idempotency_key": key(), "user_id": user, "plan_code": code,
         "payment_source": "balance", **extra},
    )  # fmt: skip
    assert reply["ok"], reply
    return reply["data"]["subscription"]  # type: ignore[no-any-return]


async def balance(bus: Bus, user: str, currency: str = "USD") -> str:
    reply = await bus.call("billing.wallet.balance", {"user_id": user, "currency": currency})
    return str(reply["data"]["accounts"][0]["balance"]["amount"])
