"""Credits: goodwill or promotional money an admin puts on an account, without a payment.

Who may send `billing.wallet.credit` is the access policy's business (`access.py`: only a
broker user it names for that queue exactly, and nobody while the policy is off unless
`BILLING_CREDIT_WITHOUT_POLICY` opens it for local development). The pipeline tells the
handler who sent it — the broker-validated AMQP user id — and the credit records it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from billing_contracts import events as ev
from billing_contracts.holds import CreditGranted, CreditResult, GrantCredit
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.ledger import Transaction, derived_id
from billing_worker.domain.money import to_wire
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork

CREDIT_ID_SCOPE = "credit"  # derived_id scope of a credit's transaction


def grant_by(
    granted_by: str,
) -> Callable[[GrantCredit, UnitOfWork, Deps], Awaitable[CreditResult]]:
    """The credit handler for a command `granted_by` (the validated broker user) sent."""

    async def grant(command: GrantCredit, uow: UnitOfWork, deps: Deps) -> CreditResult:
        return await grant_credit(command, granted_by, uow, deps)

    return grant


async def grant_credit(
    command: GrantCredit, granted_by: str, uow: UnitOfWork, deps: Deps
) -> CreditResult:
    """A `credit` transaction (provider `balance`, completed at once) onto the user's
    account, opened if need be; `credit.granted` names who granted it and why."""
    user, currency, amount = command.user_id, command.amount.currency, command.amount.minor
    account_id = await uow.wallet.open_account(user, currency)
    change = await uow.wallet.move_balance(user, currency, amount, deps.low_balance_minor(currency))
    if change is None:  # a credit never lacks funds and its account was just opened
        raise InvalidState("the credit's account does not exist", user_id=user)
    meta = json.dumps({"granted_by": granted_by, "reason": command.reason})
    row = await uow.wallet.record(
        Transaction.credit(
            derived_id(CREDIT_ID_SCOPE, user, command.idempotency_key), user, account_id,
            amount, currency, uow.clock(), reason=command.reason,
        ),
        meta,
    )  # fmt: skip
    balance = to_wire(change.balance_minor, currency)
    data = CreditGranted(
        transaction_id=row.id, user_id=user, amount=command.amount, balance=balance,
        reason=command.reason, granted_by=granted_by,
    )  # fmt: skip
    uow.emit(DomainEvent(ev.CREDIT_GRANTED, data.model_dump(mode="json")))
    return CreditResult(transaction=views.transaction_out(row), balance=balance)
