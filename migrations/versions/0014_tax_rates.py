"""tax rates: the rates invoice lines are taxed at, and each line's tax

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01

- `tax_rates` (`billing.tax-rate.upsert`, admins only): code (unique), name, `percent`
  NUMERIC(6, 4) with 0 <= percent < 100 (exact, never a float), `inclusive`.
- `invoice_lines` gains the rate it was issued with, copied (`tax_rate_code`,
  `tax_percent`, `tax_inclusive`: all three or none) and its `tax_minor` (0 <= tax <=
  amount); a later change of the rate rewrites no invoice.
- `plans` gains the rate a version's periods are taxed at, copied like a line's
  (`tax_rate_code`, `tax_percent`, `tax_inclusive`: all three or none); a change of it
  is a change of terms, so a new version.
- `invoices` gains `tax_minor` (the sum of its lines' taxes; total = subtotal + tax).
  Invoices issued before have no tax: 0, so their total = subtotal still holds.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: str | Sequence[str] | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LINE_COLUMNS = ('tax_minor', 'tax_inclusive', 'tax_percent', 'tax_rate_code')


def upgrade() -> None:
    op.create_table('tax_rates',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('percent', sa.Numeric(6, 4), nullable=False),
    sa.Column('inclusive', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('percent >= 0 AND percent < 100', name=op.f('ck_tax_rates_percent_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tax_rates')),
    sa.UniqueConstraint('code', name=op.f('uq_tax_rates_code'))
    )  # fmt: skip
    op.add_column('invoices', sa.Column(
        'tax_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.create_check_constraint(op.f('ck_invoices_tax_non_negative'), 'invoices', 'tax_minor >= 0')
    op.add_column('invoice_lines', sa.Column('tax_rate_code', sa.Text(), nullable=True))
    op.add_column('invoice_lines', sa.Column('tax_percent', sa.Numeric(6, 4), nullable=True))
    op.add_column('invoice_lines', sa.Column('tax_inclusive', sa.Boolean(), nullable=True))
    op.add_column('invoice_lines', sa.Column(
        'tax_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.create_check_constraint(
        op.f('ck_invoice_lines_tax_range'), 'invoice_lines', 'tax_minor BETWEEN 0 AND amount_minor')
    op.create_check_constraint(
        op.f('ck_invoice_lines_tax_rate_copied'), 'invoice_lines',
        '(tax_rate_code IS NULL) = (tax_percent IS NULL) '
        'AND (tax_rate_code IS NULL) = (tax_inclusive IS NULL)')  # fmt: skip
    op.add_column('plans', sa.Column('tax_rate_code', sa.Text(), nullable=True))
    op.add_column('plans', sa.Column('tax_percent', sa.Numeric(6, 4), nullable=True))
    op.add_column('plans', sa.Column('tax_inclusive', sa.Boolean(), nullable=True))
    op.create_check_constraint(
        op.f('ck_plans_tax_rate_copied'), 'plans',
        '(tax_rate_code IS NULL) = (tax_percent IS NULL) '
        'AND (tax_rate_code IS NULL) = (tax_inclusive IS NULL)')  # fmt: skip


def downgrade() -> None:
    op.drop_constraint(op.f('ck_plans_tax_rate_copied'), 'plans', type_='check')
    for column in ('tax_inclusive', 'tax_percent', 'tax_rate_code'):
        op.drop_column('plans', column)
    op.drop_constraint(op.f('ck_invoice_lines_tax_rate_copied'), 'invoice_lines', type_='check')
    op.drop_constraint(op.f('ck_invoice_lines_tax_range'), 'invoice_lines', type_='check')
    for column in _LINE_COLUMNS:
        op.drop_column('invoice_lines', column)
    op.drop_constraint(op.f('ck_invoices_tax_non_negative'), 'invoices', type_='check')
    op.drop_column('invoices', 'tax_minor')
    op.drop_table('tax_rates')
