"""A coalesced batch of withdrawals, statement by statement: one transaction, and one
statement for all its new transactions and their audit trails."""

from __future__ import annotations

import uuid

import pytest

from billing_contracts.wallet import Withdraw
from billing_worker.app import build_worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.wallet import SqlWallet
from billing_worker.handlers import wallet
from billing_worker.settings import Settings
from support.statements import statements

pytestmark = pytest.mark.integration


def withdrawal(user: str, amount: str) -> Withdraw:
    return Withdraw.model_validate(
        {"idempotency_key": uuid.uuid4().hex, "user_id": user, "description": "counted",
         "reference": "ref-1", "amount": {"amount": amount, "currency": "USD"}}
    )  # fmt: skip


_ROW = """
SELECT t.kind, t.status, t.amount_minor, t.currency, t.provider, t.provider_ref,
       t.description, t.reference, t.failure_code, t.failure_message, t.subscription_id,
       t.invoice_id, t.refund_of, t.provider_confirmation, t.metadata::text AS metadata,
       t.updated_at = t.created_at AS updated_at_created,
       t.completed_at = t.created_at AS completed_at_created,
       t.account_id = a.id AS own_account,
       array(SELECT ARRAY[coalesce(s.from_status, '-'), s.to_status, s.reason,
                          (s.at = t.created_at)::text]
             FROM transaction_transitions s WHERE s.transaction_id = t.id ORDER BY s.id)
           AS trail
FROM transactions t JOIN virtual_accounts a ON a.user_id = t.user_id
WHERE t.user_id = $1
"""


async def test_a_coalesced_batch_writes_all_its_transactions_in_one_statement(
    settings: Settings,
) -> None:
    worker = build_worker(settings)
    tag = uuid.uuid4().hex[:8]
    users = [f"count-{tag}-{i}" for i in range(8)]
    alone = f"count-{tag}-alone"
    try:
        async with driver_connection(worker.engine) as db, db.transaction():
            for user in [*users, alone]:
                await SqlWallet(db).open_account(user, "USD")
            await db.execute(
                "UPDATE virtual_accounts SET balance_minor = 500 WHERE user_id = ANY($1::text[])",
                [*users, alone],
            )
        single = await worker.service.command("wallet.withdraw", withdrawal(alone, "1.00"),
                                              wallet.withdraw)  # fmt: skip
        assert single["ok"], single

        async with statements(worker.engine) as sent:
            replies = await worker.service.command_batch(
                "wallet.withdraw",
                [withdrawal(user, "1.00") for user in users],
                wallet.withdraw,
                wallet.withdraw_many,
            )

        assert all(isinstance(r, dict) and r["ok"] for r in replies), replies
        inserts = [q for q in sent if "INSERT INTO transactions" in q]
        assert len(inserts) == 1, sent  # not one per withdrawal
        # BEGIN, the idempotency records looked up, the debits, the transactions with their
        # audit trails, the outbox rows with the idempotency records, COMMIT.
        assert len(sent) == 6, sent
        async with driver_connection(worker.engine) as db:
            expected = [tuple(row) for row in await db.fetch(_ROW, alone)]
            for user in users:  # written exactly as a withdrawal on its own writes it
                assert [tuple(row) for row in await db.fetch(_ROW, user)] == expected, user
        assert expected[0][-1] == [
            ["-", "created", "withdrawal", "true"],
            ["created", "processing", "withdrawal", "true"],
            ["processing", "completed", "withdrawal", "true"],
        ]
    finally:
        await worker.engine.dispose()
