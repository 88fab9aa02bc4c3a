"""holds: money reserved for sagas, and what withdrawals and charges may use

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

- `virtual_accounts.held_minor`: the sum of the account's open holds, with CHECKs
  `held_minor >= 0` and `balance_minor - held_minor >= 0` (available never below zero).
- `holds` (id derived from the command's key) and their audit trail `hold_transitions`;
  a partial index of open holds by expiry for the expiry job.
- `billing_debit_many` (coalesced withdrawals) debits only what is available:
  `balance_minor - held_minor >= amount`, as every other debit now does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = "('open', 'captured', 'released', 'expired')"

_DEBIT_MANY = """
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
          AND GUARD
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
    op.add_column('virtual_accounts', sa.Column('held_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.create_check_constraint(op.f('ck_virtual_accounts_held_non_negative'), 'virtual_accounts', 'held_minor >= 0')
    op.create_check_constraint(op.f('ck_virtual_accounts_held_within_balance'), 'virtual_accounts', 'balance_minor - held_minor >= 0')
    op.create_table('holds',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('account_id', sa.Uuid(), nullable=False),
    sa.Column('currency', sa.Text(), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('captured_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('capture_transaction_id', sa.Uuid(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(f"status IN {_STATUSES}", name=op.f('ck_holds_status')),
    sa.CheckConstraint('amount_minor > 0', name=op.f('ck_holds_amount_positive')),
    sa.CheckConstraint('captured_minor >= 0 AND captured_minor <= amount_minor', name=op.f('ck_holds_captured_within_hold')),
    sa.CheckConstraint("(status = 'captured') = (captured_minor > 0 AND capture_transaction_id IS NOT NULL)", name=op.f('ck_holds_captured')),
    sa.CheckConstraint("(status = 'open') = (closed_at IS NULL)", name=op.f('ck_holds_closed_at')),
    sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f('ck_holds_currency_iso4217')),
    sa.ForeignKeyConstraint(['user_id'], ['billing_users.user_id'], name=op.f('fk_holds_user_id_billing_users')),
    sa.ForeignKeyConstraint(['account_id'], ['virtual_accounts.id'], name=op.f('fk_holds_account_id_virtual_accounts')),
    sa.ForeignKeyConstraint(['capture_transaction_id'], ['transactions.id'], name=op.f('fk_holds_capture_transaction_id_transactions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holds'))
    )
    op.create_index(op.f('ix_holds_user_id'), 'holds', ['user_id'], unique=False)
    op.create_index(op.f('ix_holds_account_id'), 'holds', ['account_id'], unique=False)
    op.create_index('ix_holds_open_expires_at', 'holds', ['expires_at'], unique=False, postgresql_where=sa.text("status = 'open'"))
    op.create_table('hold_transitions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('hold_id', sa.Uuid(), nullable=False),
    sa.Column('from_status', sa.Text(), nullable=True),
    sa.Column('to_status', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint(f"from_status IS NULL OR from_status IN {_STATUSES}", name=op.f('ck_hold_transitions_from_status')),
    sa.CheckConstraint(f"to_status IN {_STATUSES}", name=op.f('ck_hold_transitions_to_status')),
    sa.ForeignKeyConstraint(['hold_id'], ['holds.id'], name=op.f('fk_hold_transitions_hold_id_holds'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hold_transitions'))
    )
    op.create_index(op.f('ix_hold_transitions_hold_id'), 'hold_transitions', ['hold_id'], unique=False)
    op.execute(_DEBIT_MANY.replace("GUARD", "a.balance_minor - a.held_minor >= p_amounts[i]"))


def downgrade() -> None:
    op.execute(_DEBIT_MANY.replace("GUARD", "a.balance_minor >= p_amounts[i]"))
    op.drop_index(op.f('ix_hold_transitions_hold_id'), table_name='hold_transitions')
    op.drop_table('hold_transitions')
    op.drop_index('ix_holds_open_expires_at', table_name='holds', postgresql_where=sa.text("status = 'open'"))
    op.drop_index(op.f('ix_holds_account_id'), table_name='holds')
    op.drop_index(op.f('ix_holds_user_id'), table_name='holds')
    op.drop_table('holds')
    op.drop_constraint(op.f('ck_virtual_accounts_held_within_balance'), 'virtual_accounts', type_='check')
    op.drop_constraint(op.f('ck_virtual_accounts_held_non_negative'), 'virtual_accounts', type_='check')
    op.drop_column('virtual_accounts', 'held_minor')
