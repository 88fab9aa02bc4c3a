"""`billing.wallet.deposit.cancel` and the expiry's cancel, on the fake unit of work: who
may cancel what (phase one), and what the provider's answer makes of the deposit (phase
three) — canceled, or completed and credited once when the customer paid first."""

from __future__ import annotations

import uuid

import pytest

from billing_contracts import events as ev
from billing_contracts.deposit_cancel import CancelDeposit
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.domain.events import PaymentOutcome
from billing_worker.handlers import deposit_cancel, wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied
from billing_worker.providers.base import PaymentResult, PaymentStatus
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, key, new_user, run, withdrawal
from support.provider_kit import CannedGateway, canned_deps, deliver, payment_event, pending_deposit


class CancelingGateway(CannedGateway):
    """Answers a cancel with `status`, describing the payment as the provider would."""

    def __init__(self) -> None:
        super().__init__()
        self.status = PaymentStatus.CANCELED
        self.rows: dict[str, TransactionRow] = {}
        self.cancels: list[tuple[str, str]] = []

    async def cancel_payment(self, provider_ref: str, idempotency_key: str) -> PaymentResult:
        self.cancels.append((provider_ref, idempotency_key))
        row = self.rows[provider_ref]
        failed = self.status is PaymentStatus.FAILED
        return PaymentResult(
            provider_ref, self.status, amount_minor=row.amount_minor, currency=row.currency,
            transaction_ref=str(row.id), failure_code="card_declined" if failed else None,
            confirmation={"id": provider_ref, "status": str(self.status)},
        )  # fmt: skip


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase(ManualClock())


@pytest.fixture
def gateway() -> CancelingGateway:
    return CancelingGateway()


@pytest.fixture
def deps(gateway: CancelingGateway) -> Deps:
    return canned_deps(gateway)


def cancel_of(user: str, transaction_id: uuid.UUID) -> CancelDeposit:
    return CancelDeposit(idempotency_key=key(), user_id=user, transaction_id=transaction_id)


async def waiting(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway, user: str
) -> TransactionRow:
    row = await pending_deposit(db, deps, user, "25.00")
    assert row.provider_ref is not None
    gateway.rows[row.provider_ref] = row
    return row


async def cancel(db: FakeDatabase, deps: Deps, command: CancelDeposit) -> TransactionRow:
    """The three phases of the command; the deposit as the reply shows it."""
    intent = await run(db, deposit_cancel.cancel_deposit, command, deps)
    result = await deposit_cancel.call_cancel(intent, deps)
    async with db.transaction() as uow:
        reply = await deposit_cancel.finish_cancel(intent, result, uow, deps)
    row = db.state.transactions[command.transaction_id]
    assert (reply.transaction.id, reply.transaction.status) == (row.id, row.status)
    return row


async def test_another_users_deposit_is_not_found_exactly_like_one_that_does_not_exist(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    owner, thief = new_user(), new_user()
    row = await waiting(db, deps, gateway, owner)
    with pytest.raises(NotFound) as stolen:
        await run(db, deposit_cancel.cancel_deposit, cancel_of(thief, row.id), deps)
    with pytest.raises(NotFound) as unknown:
        await run(db, deposit_cancel.cancel_deposit, cancel_of(thief, uuid.uuid4()), deps)
    assert stolen.value.message == unknown.value.message
    assert set(stolen.value.details) == set(unknown.value.details) == {"transaction_id"}
    assert (db.state.transactions[row.id].status, gateway.cancels) == ("processing", [])


async def test_a_withdrawal_is_no_deposit_to_cancel(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    paid = await waiting(db, deps, gateway, user)
    await deliver(db, deps, gateway, payment_event(paid, PaymentOutcome.SUCCEEDED))
    taken = await run(db, wallet.withdraw, withdrawal(user, "5.00"), deps)
    with pytest.raises(NotFound):
        await run(db, deposit_cancel.cancel_deposit, cancel_of(user, taken.transaction.id), deps)


@pytest.mark.parametrize("outcome", [PaymentOutcome.SUCCEEDED, PaymentOutcome.FAILED])
async def test_a_deposit_no_longer_processing_is_invalid_state_and_the_provider_is_not_asked(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway, outcome: PaymentOutcome
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    await deliver(db, deps, gateway, payment_event(row, outcome))
    with pytest.raises(InvalidState) as refused:
        await run(db, deposit_cancel.cancel_deposit, cancel_of(user, row.id), deps)
    assert refused.value.details["status"] == db.state.transactions[row.id].status
    assert gateway.cancels == []


async def test_a_canceled_deposit_fails_with_code_canceled_and_a_late_success_is_stale(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    done = await cancel(db, deps, cancel_of(user, row.id))
    assert (done.status, done.failure_code) == ("canceled", deposit_cancel.CANCELED_CODE)
    [failed] = db.events_of(ev.PAYMENT_FAILED)
    assert (failed["status"], failed["failure_code"]) == ("canceled", "canceled")
    late = payment_event(row, PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, gateway, late) == Applied.STALE
    assert await balance_of(db, user) == 0
    assert len(gateway.cancels) == 1


async def test_the_customer_paying_first_wins_the_deposit_completes_credited_once(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    gateway.status = PaymentStatus.SUCCEEDED  # the provider: it was paid, it cannot cancel
    done = await cancel(db, deps, cancel_of(user, row.id))
    assert done.status == "completed"
    webhook = payment_event(row, PaymentOutcome.SUCCEEDED)  # the provider's own, later
    assert await deliver(db, deps, gateway, webhook) == Applied.STALE
    with pytest.raises(InvalidState):  # a second cancel, another key: it is completed
        await run(db, deposit_cancel.cancel_deposit, cancel_of(user, row.id), deps)
    assert await balance_of(db, user) == 2500
    assert len(db.events_of(ev.DEPOSIT_COMPLETED)) == 1
    assert db.events_of(ev.PAYMENT_FAILED) == []


async def test_two_cancels_racing_apply_the_providers_answer_once(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    gateway.status = PaymentStatus.SUCCEEDED
    first = await run(db, deposit_cancel.cancel_deposit, cancel_of(user, row.id), deps)
    second = await run(db, deposit_cancel.cancel_deposit, cancel_of(user, row.id), deps)
    assert first.id != second.id  # each command its own intent
    for intent in (first, second):
        result = await deposit_cancel.call_cancel(intent, deps)
        async with db.transaction() as uow:
            reply = await deposit_cancel.finish_cancel(intent, result, uow, deps)
        assert reply.transaction.status == "completed"
    assert await balance_of(db, user) == 2500
    assert len(db.events_of(ev.DEPOSIT_COMPLETED)) == 1


async def test_a_payment_the_provider_cannot_cancel_yet_stays_processing(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    gateway.status = PaymentStatus.PENDING
    done = await cancel(db, deps, cancel_of(user, row.id))
    assert (done.status, db.events) == ("processing", [])


async def test_a_payment_that_failed_first_fails_with_the_providers_code(
    db: FakeDatabase, deps: Deps, gateway: CancelingGateway
) -> None:
    user = new_user()
    row = await waiting(db, deps, gateway, user)
    gateway.status = PaymentStatus.FAILED
    done = await cancel(db, deps, cancel_of(user, row.id))
    assert (done.status, done.failure_code) == ("failed", "card_declined")


def test_the_expirys_event_carries_code_expired_and_the_providers_success_none() -> None:
    ref, tx = "pay_1", uuid.uuid4()
    canceled = PaymentResult(ref, PaymentStatus.CANCELED, failure_code="abandoned")
    event = deposit_cancel.cancellation_event(
        tx, "sandbox", ref, canceled, origin="expiry", code="expired", message="too late"
    )
    assert event is not None
    assert (event.outcome, event.failure_code, event.event_id) == (
        PaymentOutcome.CANCELED, "expired", f"{tx}:canceled"
    )  # fmt: skip
    succeeded = PaymentResult(ref, PaymentStatus.SUCCEEDED)
    won = deposit_cancel.cancellation_event(
        tx, "sandbox", ref, succeeded, origin="expiry", code="expired", message="too late"
    )
    assert won is not None
    assert (won.outcome, won.failure_code) == (PaymentOutcome.SUCCEEDED, None)
    pending = PaymentResult(ref, PaymentStatus.PENDING)
    assert (
        deposit_cancel.cancellation_event(
            tx, "sandbox", ref, pending, origin="expiry", code="expired", message="too late"
        )
        is None
    )
