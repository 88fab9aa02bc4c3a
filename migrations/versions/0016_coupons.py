"""coupons: discounts on invoices and the subscriptions that redeemed one

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01

- `coupons` (`billing.coupon.upsert`, admins only): code (unique), name, exactly one of
  `percent_off` NUMERIC(7, 4) (0 < p <= 100, exact, never a float) and
  `amount_off_minor` (> 0, integer minor units of `currency`, set with it), `duration`
  once | repeating | forever, `duration_in_periods` (1..1000, iff repeating), `active`,
  `stripe_coupon_id`. The terms never change (the handler refuses it); name and active do.
- `coupon_redemptions`: one per subscription (its primary key, cascading with it): the
  coupon's code and `periods_used`, the charged periods it has discounted so far.
- `invoices` gains `discount_minor` (0 <= discount <= subtotal; total = subtotal -
  discount + tax) and a copy of the coupon it was discounted by (`coupon_code`,
  `coupon_percent_off` / `coupon_amount_off_minor`); `invoice_lines` its share,
  `discount_minor` (0 <= share <= amount). Invoices issued before have no discount: 0,
  so their total = subtotal + tax still holds.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: str | Sequence[str] | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INVOICE_COLUMNS = ('coupon_amount_off_minor', 'coupon_percent_off', 'coupon_code',
                    'discount_minor')  # fmt: skip


def upgrade() -> None:
    op.create_table('coupons',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('percent_off', sa.Numeric(7, 4), nullable=True),
    sa.Column('amount_off_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.Text(), nullable=True),
    sa.Column('duration', sa.Text(), nullable=False),
    sa.Column('duration_in_periods', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('stripe_coupon_id', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('(percent_off IS NULL) <> (amount_off_minor IS NULL)', name=op.f('ck_coupons_one_kind')),
    sa.CheckConstraint('percent_off > 0 AND percent_off <= 100', name=op.f('ck_coupons_percent_off_range')),
    sa.CheckConstraint('amount_off_minor > 0', name=op.f('ck_coupons_amount_off_positive')),
    sa.CheckConstraint('(amount_off_minor IS NULL) = (currency IS NULL)', name=op.f('ck_coupons_amount_currency')),
    sa.CheckConstraint("duration IN ('once', 'repeating', 'forever')", name=op.f('ck_coupons_duration')),
    sa.CheckConstraint("(duration = 'repeating') = (duration_in_periods IS NOT NULL) "
                       "AND (duration_in_periods IS NULL OR duration_in_periods BETWEEN 1 AND 1000)",
                       name=op.f('ck_coupons_duration_in_periods')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code'))
    )  # fmt: skip
    op.create_table('coupon_redemptions',
    sa.Column('subscription_id', sa.Uuid(), nullable=False),
    sa.Column('coupon_code', sa.Text(), nullable=False),
    sa.Column('periods_used', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('periods_used >= 0', name=op.f('ck_coupon_redemptions_periods_used_non_negative')),
    sa.ForeignKeyConstraint(['coupon_code'], ['coupons.code'], name=op.f('fk_coupon_redemptions_coupon_code_coupons')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_coupon_redemptions_subscription_id_subscriptions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('subscription_id', name=op.f('pk_coupon_redemptions'))
    )  # fmt: skip
    op.add_column('invoices', sa.Column(
        'discount_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('invoices', sa.Column('coupon_code', sa.Text(), nullable=True))
    op.add_column('invoices', sa.Column('coupon_percent_off', sa.Numeric(7, 4), nullable=True))
    op.add_column('invoices', sa.Column('coupon_amount_off_minor', sa.BigInteger(), nullable=True))
    op.create_check_constraint(op.f('ck_invoices_discount_range'), 'invoices',
                               'discount_minor BETWEEN 0 AND subtotal_minor')  # fmt: skip
    op.create_check_constraint(
        op.f('ck_invoices_coupon_copied'), 'invoices',
        '(coupon_code IS NULL AND coupon_percent_off IS NULL '
        'AND coupon_amount_off_minor IS NULL) OR (coupon_code IS NOT NULL '
        'AND (coupon_percent_off IS NULL) <> (coupon_amount_off_minor IS NULL))')  # fmt: skip
    op.add_column('invoice_lines', sa.Column(
        'discount_minor', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.create_check_constraint(op.f('ck_invoice_lines_discount_range'), 'invoice_lines',
                               'discount_minor BETWEEN 0 AND amount_minor')  # fmt: skip


def downgrade() -> None:
    op.drop_constraint(op.f('ck_invoice_lines_discount_range'), 'invoice_lines', type_='check')
    op.drop_column('invoice_lines', 'discount_minor')
    op.drop_constraint(op.f('ck_invoices_coupon_copied'), 'invoices', type_='check')
    op.drop_constraint(op.f('ck_invoices_discount_range'), 'invoices', type_='check')
    for column in _INVOICE_COLUMNS:
        op.drop_column('invoices', column)
    op.drop_table('coupon_redemptions')
    op.drop_table('coupons')
