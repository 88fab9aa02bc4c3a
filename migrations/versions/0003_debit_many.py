"""debit many: a batch of conditional debits in one round trip

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Coalesced withdrawals debit their accounts in order, each seeing the ones before it
(the same conditional update as one withdrawal: never below zero, the low-balance flag
armed and re-armed), inside the server: one round trip for the whole batch instead of
one per withdrawal. Row locks are taken in the batch's order, like separate statements.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE OR REPLACE FUNCTION billing_debit_many(
    p_users text[], p_currencies text[], p_amounts bigint[], p_thresholds bigint[]
) RETURNS TABLE (n integer, account_id uuid, balance_minor bigint, was_low boolean,
                 is_low boolean)
LANGUAGE plpgsql AS $$
DECLARE
    previous boolean;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_users, 1), 0) LOOP
        n := i;
        SELECT a.low_balance_alerted INTO previous FROM virtual_accounts a
        WHERE a.user_id = p_users[i] AND a.currency = p_currencies[i] FOR UPDATE;
        UPDATE virtual_accounts AS a
        SET balance_minor = a.balance_minor - p_amounts[i],
            low_balance_alerted = a.balance_minor - p_amounts[i] < p_thresholds[i],
            updated_at = now()
        WHERE a.user_id = p_users[i] AND a.currency = p_currencies[i]
          AND a.balance_minor >= p_amounts[i]
        RETURNING a.id, a.balance_minor, a.low_balance_alerted
        INTO account_id, balance_minor, is_low;
        IF FOUND THEN
            was_low := previous;
            RETURN NEXT;
        END IF;
    END LOOP;
END;
$$
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS billing_debit_many(text[], text[], bigint[], bigint[])")
