"""Canceling a deposit the customer has not paid: `billing.wallet.deposit.cancel`."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, Field

from billing_contracts.envelope import Command
from billing_contracts.wallet import TransactionOut, UserId


class CancelDeposit(Command):
    """`billing.wallet.deposit.cancel`: cancel one of the user's `processing` deposits at
    its provider. The provider has the last word: a deposit the customer paid first is
    `completed` (and credited), not canceled."""

    user_id: UserId
    transaction_id: UUID = Field(description="The deposit's transaction id")


class CancelDepositResult(BaseModel):
    transaction: TransactionOut = Field(
        description="The deposit as it now is: `canceled`; `completed` when the customer "
        "paid before the cancel reached the provider; still `processing` when the provider "
        "cannot cancel it yet (YooKassa, before the customer acted: it expires it itself)"
    )
