"""Wallet handlers: deposit, withdraw, balance and transaction history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

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
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import (
    InsufficientFunds,
    InvalidState,
)
from billing_worker.domain.ledger import (
    BalanceChange,
    Transaction,
    derived_id,
    insufficient_funds,
)
from billing_worker.domain.money import to_wire
from billing_worker.domain.paging import decode_cursor, encode_cursor
from billing_worker.handlers import default_method, receipts, views
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import (
    configured,
    ensure_customer,
    record_payment,
    saved_method_of,
)
from billing_worker.ports import UnitOfWork
from billing_worker.providers.base import (
    PaymentGateway,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
)

DEPOSIT = "deposit"  # the intent kind of a deposit


async def deposit(command: Deposit, uow: UnitOfWork, deps: Deps) -> Intent:
    """Phase one of a deposit: the transaction, `created` with no provider reference yet.

    The provider is called after this commits (`call_deposit`), outside any database
    transaction; `finish_deposit` records its answer. A redelivered command finds the
    intent and calls again with the same idempotency key: one payment at the provider.
    """
    gateway = configured(deps, command.provider)
    if command.payment_method_id and gateway.trusts_method_ids:
        await saved_method_of(uow, command.user_id, gateway.name, command.payment_method_id)
    currency, amount = command.amount.currency, command.amount.minor
    receipt = await receipts.for_deposit(
        gateway.name, command.user_id, amount, currency, uow, deps,
        email=command.customer_email, phone=command.customer_phone,
    )  # fmt: skip
    transaction_id = derived_id("deposit", command.user_id, command.idempotency_key)
    await uow.users.ensure(command.user_id)
    await uow.wallet.record(
        Transaction.deposit(
            transaction_id, command.user_id, amount, currency, gateway.name, uow.clock()
        ),
        receipts.meta(receipt),
    )
    return await payment_intent(
        uow, gateway, DEPOSIT, transaction_id, command.user_id, amount, currency,
        payment_method_id=command.payment_method_id, return_url=command.return_url,
        receipt=receipt,
    )  # fmt: skip


async def payment_intent(
    uow: UnitOfWork, gateway: PaymentGateway, kind: str, transaction_id: UUID, user_id: str,
    amount: int, currency: str, *, payment_method_id: str | None, return_url: str | None,
    receipt: dict[str, Any] | None, **extra: str,
) -> Intent:  # fmt: skip
    """Phase one's hand-over of a provider payment (a deposit, an invoice paid by card):
    the customer it is made for, the method charged (the user's default for want of one
    named) and what phase two asks the provider for."""
    customer = (
        await uow.users.customer_ref(user_id, gateway.name) if gateway.needs_customer else None
    )
    method, by_default = await default_method.method_for(
        uow, user_id, gateway.name, payment_method_id
    )
    request: dict[str, Any] = {
        "amount_minor": amount,
        "currency": currency,
        "payment_method_id": method,
        "return_url": return_url,
        "default_method": by_default,  # the user's default, charged for want of one named
        **extra,
    }
    if receipt is not None:
        request["receipt"] = receipt
    return Intent(id=transaction_id, kind=kind, provider=gateway.name,
                  user_id=user_id, request=request, customer_ref=customer)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Charged:
    """What the provider answered, and the customer created for the payment (if any)."""

    result: PaymentResult
    new_customer: str | None = None


async def call_deposit(intent: Intent, deps: Deps) -> Charged:
    """Phase two: the provider call, holding no database connection."""
    gateway = configured(deps, intent.provider)
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
            receipt=request.get("receipt"),
        )
    )
    return Charged(result, created)


async def finish_deposit(
    intent: Intent, charged: Charged, uow: UnitOfWork, deps: Deps
) -> DepositResult:
    """Phase three: the provider's answer on the transaction, the balance, the events."""
    result = charged.result
    row = await record_answer(intent, charged, uow)
    if result.status is PaymentStatus.SUCCEEDED:
        await credit_deposit(row, uow, deps)
    elif result.status is PaymentStatus.FAILED:
        uow.emit(views.payment_failed(row))
    action = PaymentAction.model_validate(result.action) if result.action else None
    return DepositResult(
        transaction=views.transaction_out(row), payment_action=action,
        payment_method_id=intent.request.get("payment_method_id"),
    )  # fmt: skip


async def record_answer(intent: Intent, charged: Charged, uow: UnitOfWork) -> TransactionRow:
    """The provider's answer to a payment intent on its transaction (a deposit's or an
    invoice card payment's): the customer it made remembered, the account opened, the
    provider's notifications queued. What the answer then moves is the caller's."""
    if charged.new_customer:
        await uow.users.remember_customer(intent.user_id, intent.provider, charged.new_customer)
    account_id = await uow.wallet.open_account(intent.user_id, str(intent.request["currency"]))
    row = await record_payment(
        intent.id, charged.result, uow, account_id=account_id, reason=f"{intent.provider} payment"
    )
    for notification in charged.result.notifications:
        uow.deliver_later(intent.provider, notification)
    return row


async def undo_deposit(intent: Intent, uow: UnitOfWork) -> None:
    """The provider refused outright: the intent's transaction goes."""
    await uow.wallet.discard_created(intent.id)


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
    debits = [(c.user_id, c.amount.currency, c.amount.minor,
               deps.low_balance_minor(c.amount.currency)) for c in commands]  # fmt: skip
    changes = await uow.wallet.debit_many(debits)
    now = uow.clock()
    outcomes: list[WithdrawResult | InsufficientFunds] = []
    for command, change in zip(commands, changes, strict=True):
        if change is None:
            currency, wanted = command.amount.currency, command.amount.amount
            outcomes.append(await refusal(uow, command.user_id, currency, wanted))
        else:
            outcomes.append(await _withdrawn(command, change, now, uow))
    return outcomes


async def _withdrawn(
    command: Withdraw, change: BalanceChange, now: datetime, uow: UnitOfWork
) -> WithdrawResult:
    """A debited withdrawal: its transaction, its events, the reply."""
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
    return WithdrawResult(transaction=views.transaction_out(row), balance=balance)


async def refusal(
    uow: UnitOfWork, user_id: str, currency: str, wanted: str, **details: object
) -> InsufficientFunds:
    """`insufficient_funds` for a debit of `wanted` what the user's account has available
    (its balance less its open holds) does not cover."""
    accounts = {c: (b, h) for c, b, h in await uow.holds.balances(user_id, currency)}
    balance, held = accounts.get(currency, (0, 0))
    return insufficient_funds(currency, balance, wanted, held_minor=held, **details)


async def get_balance(query: GetBalance, uow: UnitOfWork, deps: Deps) -> BalanceResult:
    """Each account's balance and what is available of it (the balance less open holds)."""
    return _balance(query, await uow.holds.balances(query.user_id, query.currency))


async def get_balances(
    queries: Sequence[GetBalance], uow: UnitOfWork, deps: Deps
) -> list[BalanceResult]:
    """`get_balance` of many queries in one round trip (coalesced), in order."""
    found = await uow.holds.balances_many([(q.user_id, q.currency) for q in queries])
    return [_balance(query, accounts) for query, accounts in zip(queries, found, strict=True)]


def _balance(query: GetBalance, accounts: list[tuple[str, int, int]]) -> BalanceResult:
    return BalanceResult(
        user_id=query.user_id,
        accounts=[
            AccountBalance(currency=currency, balance=to_wire(minor, currency),
                           available=to_wire(minor - held, currency))
            for currency, minor, held in accounts
        ],
    )  # fmt: skip


async def list_transactions(
    query: ListTransactions, uow: UnitOfWork, deps: Deps
) -> TransactionPage:
    after = decode_cursor(query.cursor) if query.cursor else None
    rows = await uow.wallet.transactions_page(query.user_id, query.currency, query.limit + 1, after)
    page, more = rows[: query.limit], len(rows) > query.limit
    return TransactionPage(
        items=[views.transaction_out(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )
