"""Payments and refunds of one integration test, through the bus, the relay and the HTTP
fakes (tests/integration/providers/test_refunds.py, test_refund_webhooks.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from billing_worker.ops.audit import audit
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.relay import Relay
from support.rpc import Bus

REFUND = "billing.payment.refund"
CURRENCY = {"stripe": "USD", "yookassa": "RUB", "sandbox": "USD"}


class Shop:
    """Payments and refunds of one test, through the bus, the relay and the fakes."""

    def __init__(self, bus: Bus, relay: Relay, stripe: tuple[FakeStripe, str],
                 yookassa: tuple[FakeYooKassa, str]) -> None:  # fmt: skip
        self.bus, self.relay = bus, relay
        (self.stripe, self.stripe_base), (self.yookassa, self.yookassa_base) = stripe, yookassa

    async def deposit(self, provider: str, user: str, amount: str) -> str:
        """A completed deposit; its transaction id."""
        body = {"idempotency_key": uuid.uuid4().hex, "user_id": user, "provider": provider,
                "amount": {"amount": amount, "currency": CURRENCY[provider]},
                "return_url": "https://shop.example/return"}  # fmt: skip
        reply = await self.bus.call("billing.wallet.deposit", body)
        assert reply["ok"], reply
        transaction_id = str(reply["data"]["transaction"]["id"])
        if provider == "stripe":
            [pi] = [p for p in self.stripe.payment_intents.values()
                    if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            done = self.stripe.succeed(pi["id"])
            await self.relay.stripe(self.stripe.event("payment_intent.succeeded", done))
        elif provider == "yookassa":
            [payment_id] = [pid for pid, p in self.yookassa.payments.items()
                            if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            self.yookassa.pay(payment_id)
            await self.relay.yookassa(self.yookassa.notification("payment.succeeded", payment_id))
        await self.bus.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id)
        return transaction_id

    async def refund(
        self, user: str, transaction_id: str, amount: str | None = None,
        destination: str = "original", currency: str = "USD",
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "idempotency_key": uuid.uuid4().hex,
            "user_id": user,
            "transaction_id": transaction_id,
            "destination": destination,
        }
        if amount is not None:
            body["amount"] = {"amount": amount, "currency": currency}
        return await self.bus.call(REFUND, body, timeout=30)

    async def balance(self, user: str, currency: str) -> str:
        reply = await self.bus.call(
            "billing.wallet.balance", {"user_id": user, "currency": currency}
        )
        accounts = reply["data"]["accounts"]
        return str(accounts[0]["balance"]["amount"]) if accounts else "none"

    def refund_calls(self, provider: str) -> int:
        if provider == "stripe":
            return len(self.stripe.calls("POST", "/v1/refunds"))
        if provider == "yookassa":
            return len(self.yookassa.requests_to("POST", "/v3/refunds"))
        return 0

    def provider_refunded(self, provider: str, transaction_id: str) -> int | str:
        """What the provider itself says is refunded of the payment (ours, or its own id)."""
        if provider == "stripe":
            [pi] = [p for p in self.stripe.payment_intents.values()
                    if p["metadata"]["transaction_id"] == transaction_id]  # fmt: skip
            return int(self.stripe.charges[pi["latest_charge"]]["amount_refunded"])
        [payment] = [p for pid, p in self.yookassa.payments.items()
                     if transaction_id in (pid, p["metadata"]["transaction_id"])]  # fmt: skip
        return str(payment.get("refunded_amount", {}).get("value", "0"))


def new_user() -> str:
    return f"refund-user-{uuid.uuid4().hex[:8]}"


async def assert_audit_clean(db: asyncpg.Connection) -> None:
    findings = await audit(db)
    assert not findings, "\n".join(f"{f.check}: {f.rows[:5]}" for f in findings)


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    """Until `check()` (a coroutine function) is true, with a deadline."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def count(shop: Shop, type_: str, payment: str, n: int) -> bool:
    return len(shop.bus.events_of(type_, lambda d: d["transaction_id"] == payment)) == n
