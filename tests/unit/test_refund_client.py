"""The typed client's `refund_payment`: the command it sends, refused before sending when
the contract refuses it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from billing_contracts import names
from billing_contracts.client import BillingClient
from billing_contracts.money import Money
from billing_contracts.refunds import RefundPayment, RefundResult


class Captured(BillingClient):
    """A client whose requests are captured instead of sent."""

    def __init__(self) -> None:  # no connection
        self.sent: list[tuple[str, Any, Any]] = []

    async def request(self, queue: str, message: Any, reply: Any, **_: Any) -> Any:
        self.sent.append((queue, message, reply))
        return "reply"


async def test_refund_payment_sends_the_refund_command() -> None:
    client = Captured()
    result = await client.refund_payment(
        user_id="u-42", transaction_id="5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34",
        destination="original", idempotency_key="order-42-refund",
        amount=Money(amount="10.00", currency="USD"), reason="requested_by_customer",
    )  # fmt: skip
    [(queue, command, reply)] = client.sent
    assert (result, queue, reply) == ("reply", names.PAYMENT_REFUND, RefundResult)
    assert isinstance(command, RefundPayment)
    assert command.model_dump(mode="json") == {
        "idempotency_key": "order-42-refund", "user_id": "u-42",
        "transaction_id": "5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34",
        "amount": {"amount": "10.00", "currency": "USD"}, "reason": "requested_by_customer",
        "destination": "original",
    }  # fmt: skip


async def test_a_refund_of_nothing_is_refused_before_it_is_sent() -> None:
    client = Captured()
    with pytest.raises(ValidationError):
        await client.refund_payment(
            user_id="u-42", transaction_id="5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34",
            destination="balance", idempotency_key="k", amount=Money(amount="0", currency="USD"),
        )  # fmt: skip
    assert client.sent == []
