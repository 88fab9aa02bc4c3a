"""What the saved-payment-method integration tests share: the queues, listing, the
commands, and the `not_found` an owner check answers."""

from __future__ import annotations

import uuid
from typing import Any

from support.rpc import Bus

SETUP, LIST = "billing.payment-method.setup", "billing.payment-method.list"
DETACH, DEFAULT = "billing.payment-method.detach", "billing.payment-method.set-default"
UPDATE = "billing.subscription.update-payment-method"
DEPOSIT = "billing.wallet.deposit"


def key() -> str:
    return uuid.uuid4().hex


def new_user(role: str = "u") -> str:
    return f"pmx-{role}-{uuid.uuid4().hex[:8]}"


async def listing(bus: Bus, user: str, provider: str | None = None) -> list[dict[str, Any]]:
    query = {"user_id": user} | ({"provider": provider} if provider else {})
    reply = await bus.call(LIST, query)
    assert reply["ok"], reply
    return reply["data"]["items"]  # type: ignore[no-any-return]


async def change(bus: Bus, queue: str, user: str, provider: str, method: str) -> dict[str, Any]:
    return await bus.call(queue, {"idempotency_key": key(), "user_id": user,
                                  "provider": provider, "payment_method_id": method})  # fmt: skip


async def deposit(
    bus: Bus, user: str, provider: str, amount: str, currency: str, **extra: str
) -> dict[str, Any]:
    money = {"amount": amount, "currency": currency}
    return await bus.call(DEPOSIT, {"idempotency_key": key(), "user_id": user,
                                    "provider": provider, "amount": money, **extra})  # fmt: skip


def not_found(reply: dict[str, Any], method: str, provider: str) -> bool:
    return reply == {"ok": False, "error": {
        "code": "not_found", "message": f"no saved {provider} payment method {method}",
        "details": {"payment_method_id": method}}}  # fmt: skip
