"""plan changes: a live subscription moved to another plan (or seats) by its user

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01

- `subscriptions` gains the change a renewal applies at the end of the paid period
  (`billing.subscription.change-plan` with `when` = `period_end`): `scheduled_plan_id`
  (the target version row) and `scheduled_quantity`, both or none; a later change-plan
  replaces them, a cancel clears them.
- `subscription_plan_changes` records every change, not only `billing.plan.migrate`'s:
  `kind` ('migrate', the default of the rows written before, or 'change_plan', which
  may move the subscription to another plan code), the seats before and after
  (`from_quantity`, `to_quantity`; null on a migration, which keeps them) and the money
  the change moved at once, `proration_minor` (positive: charged, negative: credited to
  the balance; null: none). `subscriptions.plan_code` follows a change of code, so the
  one-live-subscription-per-user-and-plan index holds for the new code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: str | Sequence[str] | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHANGES = 'subscription_plan_changes'


def upgrade() -> None:
    op.add_column('subscriptions', sa.Column('scheduled_plan_id', sa.Uuid(), nullable=True))
    op.add_column('subscriptions', sa.Column('scheduled_quantity', sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f('fk_subscriptions_scheduled_plan_id_plans'), 'subscriptions', 'plans',
        ['scheduled_plan_id'], ['id'])  # fmt: skip
    op.create_check_constraint(
        op.f('ck_subscriptions_scheduled_change'), 'subscriptions',
        '(scheduled_plan_id IS NULL) = (scheduled_quantity IS NULL) '
        'AND (scheduled_quantity IS NULL OR scheduled_quantity BETWEEN 1 AND 10000)')  # fmt: skip
    op.add_column(_CHANGES, sa.Column(
        'kind', sa.Text(), server_default=sa.text("'migrate'"), nullable=False))
    op.add_column(_CHANGES, sa.Column('from_quantity', sa.Integer(), nullable=True))
    op.add_column(_CHANGES, sa.Column('to_quantity', sa.Integer(), nullable=True))
    op.add_column(_CHANGES, sa.Column('proration_minor', sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f('ck_subscription_plan_changes_kind'), _CHANGES,
        "kind IN ('migrate', 'change_plan')")  # fmt: skip


def downgrade() -> None:
    op.drop_constraint(op.f('ck_subscription_plan_changes_kind'), _CHANGES, type_='check')
    for column in ('proration_minor', 'to_quantity', 'from_quantity', 'kind'):
        op.drop_column(_CHANGES, column)
    op.drop_constraint(op.f('ck_subscriptions_scheduled_change'), 'subscriptions', type_='check')
    op.drop_constraint(op.f('fk_subscriptions_scheduled_plan_id_plans'), 'subscriptions',
                       type_='foreignkey')  # fmt: skip
    op.drop_column('subscriptions', 'scheduled_quantity')
    op.drop_column('subscriptions', 'scheduled_plan_id')
