"""subscription renewals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

`subscription_charges` holds one row per paid period, unique on (subscription,
period index): the database, not only the scheduler, guarantees that a period is
charged at most once, whichever replica runs the renewal. Subscriptions gain the
count of paid periods and their dunning state.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may render sqlmodel.sql.sqltypes.AutoString)
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('subscription_charges',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('subscription_id', sa.Uuid(), nullable=False),
    sa.Column('period_index', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('transaction_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('period_index >= 0', name=op.f('ck_subscription_charges_period_index_non_negative')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_subscription_charges_subscription_id_subscriptions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['transaction_id'], ['transactions.id'], name=op.f('fk_subscription_charges_transaction_id_transactions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscription_charges')),
    sa.UniqueConstraint('subscription_id', 'period_index', name=op.f('uq_subscription_charges_period')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_subscription_charges_transaction_id'))
    )
    op.add_column('subscriptions', sa.Column('paid_periods', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('subscriptions', sa.Column('dunning_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('subscriptions', sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('subscriptions', 'next_attempt_at')
    op.drop_column('subscriptions', 'dunning_attempts')
    op.drop_column('subscriptions', 'paid_periods')
    op.drop_table('subscription_charges')
