"""`order.created`: the inbound event from the Orders service that the worker invoices."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from billing_contracts.invoices import MAX_LINES, MAX_QUANTITY
from billing_contracts.money import Currency, Money
from billing_contracts.wallet import UserId


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: str | None = Field(default=None, min_length=1, max_length=255, examples=["SKU-123"])
    description: str = Field(min_length=1, max_length=500, examples=["Blue mug"])
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True, examples=[2])
    unit_price: Money = Field(
        description="Zero is allowed (a free item)",
        examples=[{"amount": "4.50", "currency": "USD"}],
    )


class OrderCreated(BaseModel):
    """`order.created` on the `orders` exchange: becomes one invoice per `order_id`.

    An event, not a command: it has no idempotency key, `order_id` is its key, so a
    redelivered or duplicated order makes no second invoice.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: str = Field(min_length=1, max_length=255, examples=["ord_42"])
    user_id: UserId
    currency: Currency
    items: list[OrderItem] = Field(min_length=1, max_length=MAX_LINES)
