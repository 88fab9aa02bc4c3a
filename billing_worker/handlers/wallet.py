"""Wallet handlers: deposit, withdraw, balance and transaction history."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from billing_contracts.wallet import (
    AccountBalance,
    BalanceResult,
    Deposit,
    DepositResult,
    GetBalance,
    ListTransactions,
    PaymentAction,
    TransactionPage,
    Withdraw,
    WithdrawResult,
)
from billing_contracts.wallet import TransactionStatus as Status
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import (
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
    ProviderError,
)
from billing_worker.domain.ledger import PAYMENT_STEPS, Transaction, insufficient_funds
from billing_worker.domain.money import to_wire
from billing_worker.domain.transactions import transition
from billing_worker.handlers import views
from billing_worker.handlers.deps import Deps
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import (
    PaymentGateway,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    UnknownProvider,
)

_IDS = uuid.UUID("6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11")  # namespace of derived ids


def derived_id(scope: str, user_id: str, idempotency_key: str) -> uuid.UUID:
    """The same command always names the same transaction (and provider idempotency key).

    The user is part of it, as of the command's idempotency scope: two users' equal keys
    name two different rows (and two different payments at the provider).
    """
    return uuid.uuid5(_IDS, json.dumps([scope, user_id, idempotency_key]))


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


DEPOSIT = "deposit"  # the intent kind of a deposit


async def deposit(command: Deposit, uow: UnitOfWork, deps: Deps) -> Intent:
    """Phase one of a deposit: the transaction, `created` with no provider reference yet.

    The provider is called after this commits (`call_deposit`), outside any database
    transaction; `finish_deposit` records its answer. A redelivered command finds the
    intent and calls again with the same idempotency key: one payment at the provider.
    """
    try:
        gateway = deps.gateways.get(command.provider)
    except UnknownProvider as missing:
        raise ProviderError(f"provider {missing} is not configured on this worker") from None
    if command.payment_method_id and gateway.trusts_method_ids:
        await saved_method_of(uow, command.user_id, gateway.name, command.payment_method_id)
    currency, amount = command.amount.currency, command.amount.minor
    transaction_id = derived_id("deposit", command.user_id, command.idempotency_key)
    await uow.users.ensure(command.user_id)
    await uow.wallet.record(
        Transaction.deposit(
            transaction_id, command.user_id, amount, currency, gateway.name, uow.clock()
        )
    )
    customer = (
        await uow.users.customer_ref(command.user_id, gateway.name)
        if gateway.needs_customer
        else None
    )
    return Intent(
        id=transaction_id,
        kind=DEPOSIT,
        provider=gateway.name,
        user_id=command.user_id,
        request={
            "amount_minor": amount,
            "currency": currency,
            "payment_method_id": command.payment_method_id,
            "return_url": command.return_url,
        },
        customer_ref=customer,
    )


@dataclass(frozen=True, slots=True)
class Charged:
    """What the provider answered, and the customer created for the payment (if any)."""

    result: PaymentResult
    new_customer: str | None = None


def gateway_of(intent: Intent, deps: Deps) -> PaymentGateway:
    try:
        return deps.gateways.get(intent.provider)
    except UnknownProvider as missing:
        raise ProviderError(f"provider {missing} is not configured on this worker") from None


async def call_deposit(intent: Intent, deps: Deps) -> Charged:
    """Phase two: the provider call, holding no database connection."""
    gateway = gateway_of(intent, deps)
    customer, created = await ensure_customer(gateway, intent)
    request = intent.request
    result = await gateway.create_payment(
        PaymentRequest(
            transaction_id=intent.id,
            user_id=intent.user_id,
            amount_minor=int(request["amount_minor"]),
            currency=str(request["currency"]),
            idempotency_key=str(intent.id),
            payment_method_id=request.get("payment_method_id"),
            return_url=request.get("return_url"),
            customer_ref=customer,
        )
    )
    return Charged(result, created)


async def finish_deposit(
    intent: Intent, charged: Charged, uow: UnitOfWork, deps: Deps
) -> DepositResult:
    """Phase three: the provider's answer on the transaction, the balance, the events."""
    result = charged.result
    if charged.new_customer:
        await uow.users.remember_customer(intent.user_id, intent.provider, charged.new_customer)
    account_id = await uow.wallet.open_account(intent.user_id, str(intent.request["currency"]))
    row = await record_payment(
        intent.id, result, uow, account_id=account_id, reason=f"{intent.provider} payment"
    )
    for notification in result.notifications:
        uow.deliver_later(intent.provider, notification)
    if result.status is PaymentStatus.SUCCEEDED:
        await credit_deposit(row, uow, deps)
    elif result.status is PaymentStatus.FAILED:
        uow.emit(views.payment_failed(row))
    action = PaymentAction.model_validate(result.action) if result.action else None
    return DepositResult(transaction=views.transaction_out(row), payment_action=action)


async def undo_deposit(intent: Intent, uow: UnitOfWork) -> None:
    """The provider refused outright: the intent's transaction goes."""
    await uow.wallet.discard_created(intent.id)


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


async def credit_deposit(row: TransactionRow, uow: UnitOfWork, deps: Deps) -> None:
    """Put a completed deposit on the balance and announce it."""
    change = await uow.wallet.move_balance(
        row.user_id, row.currency, row.amount_minor, deps.low_balance_minor(row.currency)
    )
    if change is None:  # the account is opened with the deposit, so this is a broken invariant
        raise InvalidState("the deposit's account does not exist", transaction_id=str(row.id))
    uow.emit(views.payment_succeeded(row))
    uow.emit(views.deposit_completed(row, change))


async def withdraw(command: Withdraw, uow: UnitOfWork, deps: Deps) -> WithdrawResult:
    [outcome] = await withdraw_many([command], uow, deps)
    if isinstance(outcome, InsufficientFunds):
        raise outcome
    return outcome


async def withdraw_many(
    commands: Sequence[Withdraw], uow: UnitOfWork, deps: Deps
) -> list[WithdrawResult | InsufficientFunds]:
    """Withdrawals in order, the debits in one round trip; each gets its own outcome.

    A refusal writes nothing, so refused and accepted withdrawals can share a transaction.
    """
    if not commands:
        return []
    changes = await uow.wallet.debit_many(
        [
            (
                c.user_id,
                c.amount.currency,
                c.amount.minor,
                deps.low_balance_minor(c.amount.currency),
            )
            for c in commands
        ]
    )
    now = uow.clock()
    outcomes: list[WithdrawResult | InsufficientFunds] = []
    for command, change in zip(commands, changes, strict=True):
        if change is None:
            outcomes.append(await _insufficient(command, uow))
            continue
        currency = command.amount.currency
        row = await uow.wallet.record(
            Transaction.withdrawal(
                derived_id("withdraw", command.user_id, command.idempotency_key),
                command.user_id, change.account_id, command.amount.minor, currency, now,
                description=command.description, reference=command.reference,
            )
        )  # fmt: skip
        uow.emit(views.withdrawal_completed(row, change))
        if change.crossed_below:
            uow.emit(views.balance_low(command.user_id, currency, change))
        balance = to_wire(change.balance_minor, currency)
        outcomes.append(WithdrawResult(transaction=views.transaction_out(row), balance=balance))
    return outcomes


async def _insufficient(command: Withdraw, uow: UnitOfWork) -> InsufficientFunds:
    return await refusal(uow, command.user_id, command.amount.currency, str(command.amount.amount))


async def refusal(
    uow: UnitOfWork, user_id: str, currency: str, wanted: str, **details: object
) -> InsufficientFunds:
    """`insufficient_funds` for a debit of `wanted` the user's balance does not cover."""
    balances = dict(await uow.wallet.balances(user_id, currency))
    return insufficient_funds(currency, balances.get(currency, 0), wanted, **details)


async def get_balance(query: GetBalance, uow: UnitOfWork, deps: Deps) -> BalanceResult:
    balances = await uow.wallet.balances(query.user_id, query.currency)
    return BalanceResult(
        user_id=query.user_id,
        accounts=[
            AccountBalance(currency=currency, balance=to_wire(minor, currency))
            for currency, minor in balances
        ],
    )


async def list_transactions(
    query: ListTransactions, uow: UnitOfWork, deps: Deps
) -> TransactionPage:
    after = decode_cursor(query.cursor) if query.cursor else None
    rows = await uow.wallet.transactions_page(query.user_id, query.currency, query.limit + 1, after)
    page, more = rows[: query.limit], len(rows) > query.limit
    return TransactionPage(
        items=[views.transaction_out(row) for row in page],
        next_cursor=encode_cursor(page[-1]) if more else None,
    )


def encode_cursor(row: TransactionRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, ident = raw.partition("|")
        at = datetime.fromisoformat(moment)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(ident)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this service returned", cursor=cursor) from None
