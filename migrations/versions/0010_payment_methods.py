"""payment methods: what `billing.payment-method.list` shows, the default, detaching

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

- `payment_methods` gains the card as the provider describes it (`brand`, `last4`,
  `exp_month`, `exp_year`), `is_default` (at most one live default per user and
  provider: a partial unique index) and `detached_at` (a detached method is never
  charged again; the row stays for history).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('payment_methods', sa.Column('brand', sa.Text(), nullable=True))
    op.add_column('payment_methods', sa.Column('last4', sa.Text(), nullable=True))
    op.add_column('payment_methods', sa.Column('exp_month', sa.Integer(), nullable=True))
    op.add_column('payment_methods', sa.Column('exp_year', sa.Integer(), nullable=True))
    op.add_column(
        'payment_methods',
        sa.Column('is_default', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    )
    op.add_column(
        'payment_methods', sa.Column('detached_at', sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        'uq_payment_methods_one_default', 'payment_methods', ['user_id', 'provider'],
        unique=True, postgresql_where=sa.text('is_default AND detached_at IS NULL'),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index('uq_payment_methods_one_default', table_name='payment_methods')
    for column in ('detached_at', 'is_default', 'exp_year', 'exp_month', 'last4', 'brand'):
        op.drop_column('payment_methods', column)
