"""Provider payments as the deposit and the subscription handlers share them: the
configured gateway, the saved method a provider would charge as given, the provider's
customer, and the provider's answer on a `created` payment."""

from __future__ import annotations

import hashlib
import uuid

from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidState, NotFound, ProviderError
from billing_worker.domain.ledger import PAYMENT_STEPS
from billing_worker.domain.transactions import transition
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import PaymentGateway, PaymentResult, UnknownProvider


def configured(deps: Deps, provider: str | None) -> PaymentGateway:
    """The gateway of `provider` (None: the default); `provider_error` when it is not on."""
    try:
        return deps.gateways.get(provider)
    except UnknownProvider as missing:
        raise ProviderError(f"provider {missing} is not configured on this worker") from None


async def saved_method_of(
    uow: UnitOfWork, user_id: str, provider: str, method_ref: str
) -> uuid.UUID:
    """The user's own saved method, checked before a provider that charges a saved method
    id as given (`PaymentGateway.trusts_method_ids`) is asked to charge it.

    Another user's method is refused exactly like one never saved (`not_found`), so the
    reply does not tell whether the id exists."""
    method = await uow.users.payment_method_of(user_id, provider, method_ref)
    if method is None:
        raise NotFound(
            f"no saved {provider} payment method {method_ref}", payment_method_id=method_ref
        )
    return method


async def record_payment(
    transaction_id: uuid.UUID,
    result: PaymentResult,
    uow: UnitOfWork,
    *,
    account_id: uuid.UUID | None = None,
    reason: str,
) -> TransactionRow:
    """Move a `created` payment as the provider answered: to processing (pending), on to
    completed with the provider's confirmation (succeeded), or to failed."""
    now = uow.clock()
    row = await uow.wallet.start_payment(transaction_id, result.provider_ref, account_id, now)
    if row is None:  # the intent was ours (taken under its lock): a broken invariant
        raise InvalidState("the payment is no longer waiting for the provider",
                           transaction_id=str(transaction_id))  # fmt: skip
    for target in PAYMENT_STEPS[result.status]:
        step = transition(Status(row.status), target, reason=reason)
        # The provider's answer is kept with the payment it confirms.
        confirmation = dict(result.confirmation or {}) if target is Status.COMPLETED else None
        moved = await uow.wallet.move_transaction(
            row.id, step, now, failure_code=result.failure_code,
            failure_message=result.failure_message, confirmation=confirmation,
        )  # fmt: skip
        if moved is None:
            raise InvalidState("the payment changed under its lock", transaction_id=str(row.id))
        row = moved
    return row


def customer_key(user_id: str) -> str:
    # The key makes concurrent first payments of one user share one provider customer.
    return "customer-" + hashlib.sha256(user_id.encode()).hexdigest()[:48]


async def ensure_customer(gateway: PaymentGateway, intent: Intent) -> tuple[str | None, str | None]:
    """(the customer to pay for, the one created now) — created once per user, with an
    idempotency key of the user's, when the gateway needs one and none is stored yet."""
    if not gateway.needs_customer:
        return None, None
    if intent.customer_ref:
        return intent.customer_ref, None
    created = await gateway.create_customer(intent.user_id, None, customer_key(intent.user_id))
    return created, created
