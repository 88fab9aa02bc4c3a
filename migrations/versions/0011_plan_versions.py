"""plan versions: a subscription keeps the terms it was sold on

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

- `plans` gains `version` (1, 2, ...); (code, version) is unique instead of code. An
  upsert that changes a plan's terms inserts the next version; the current version of a
  code is its highest. Existing plans become version 1.
- `subscriptions` gains `plan_code` (the code of the plan it was sold, copied at insert,
  never changed) and `anchor_offset` (the period index its `billing_anchor` is period 0
  of: a migration to another interval re-anchors at the period end). The one-live-
  subscription index moves from (user, plan row) to (user, plan code), so a user cannot
  hold two live subscriptions on two versions of one plan.
- `subscription_charges` gains `plan_id`, the version row each period was charged on
  (backfilled with the subscription's plan: before 0011 a plan had one row).
- `subscription_plan_changes`: every `billing.plan.migrate` move of a subscription, from
  which period on (the audit checks each charged period against this history).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: str | Sequence[str] | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('incomplete', 'trialing', 'active', 'past_due')"


def upgrade() -> None:
    op.add_column(
        'plans', sa.Column('version', sa.Integer(), server_default=sa.text('1'), nullable=False)
    )
    op.create_check_constraint(op.f('ck_plans_version_positive'), 'plans', 'version > 0')
    op.drop_constraint('uq_plans_code', 'plans', type_='unique')
    op.create_unique_constraint('uq_plans_code_version', 'plans', ['code', 'version'])

    op.add_column('subscriptions', sa.Column('plan_code', sa.Text(), nullable=True))
    op.execute(
        "UPDATE subscriptions s SET plan_code = p.code FROM plans p WHERE p.id = s.plan_id"
    )
    op.alter_column('subscriptions', 'plan_code', nullable=False)
    op.add_column(
        'subscriptions',
        sa.Column('anchor_offset', sa.Integer(), server_default=sa.text('0'), nullable=False),
    )
    op.drop_index('uq_subscriptions_one_live_per_user_plan', table_name='subscriptions')
    op.create_index(
        'uq_subscriptions_one_live_per_user_plan', 'subscriptions', ['user_id', 'plan_code'],
        unique=True, postgresql_where=sa.text(_LIVE),
    )  # fmt: skip

    op.add_column('subscription_charges', sa.Column('plan_id', sa.Uuid(), nullable=True))
    op.create_foreign_key(
        'fk_subscription_charges_plan_id_plans', 'subscription_charges', 'plans',
        ['plan_id'], ['id'],
    )  # fmt: skip
    op.execute(
        "UPDATE subscription_charges c SET plan_id = s.plan_id FROM subscriptions s "
        "WHERE s.id = c.subscription_id"
    )

    op.create_table(
        'subscription_plan_changes',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('subscription_id', sa.Uuid(), nullable=False),
        sa.Column('from_plan_id', sa.Uuid(), nullable=False),
        sa.Column('to_plan_id', sa.Uuid(), nullable=False),
        sa.Column('from_period_index', sa.Integer(), nullable=False),
        sa.Column('effective_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
            nullable=False,
        ),
        sa.CheckConstraint(
            'from_period_index >= 0',
            name=op.f('ck_subscription_plan_changes_from_period_index_non_negative'),
        ),
        sa.ForeignKeyConstraint(
            ['subscription_id'], ['subscriptions.id'], ondelete='CASCADE',
            name=op.f('fk_subscription_plan_changes_subscription_id_subscriptions'),
        ),
        sa.ForeignKeyConstraint(
            ['from_plan_id'], ['plans.id'],
            name=op.f('fk_subscription_plan_changes_from_plan_id_plans'),
        ),
        sa.ForeignKeyConstraint(
            ['to_plan_id'], ['plans.id'],
            name=op.f('fk_subscription_plan_changes_to_plan_id_plans'),
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_subscription_plan_changes')),
    )  # fmt: skip
    op.create_index(
        'ix_subscription_plan_changes_subscription_id', 'subscription_plan_changes',
        ['subscription_id'],
    )  # fmt: skip


def downgrade() -> None:
    # Only a database without a second version of any plan can go back to one row per code.
    op.drop_index(
        'ix_subscription_plan_changes_subscription_id', table_name='subscription_plan_changes'
    )
    op.drop_table('subscription_plan_changes')
    op.drop_constraint(
        'fk_subscription_charges_plan_id_plans', 'subscription_charges', type_='foreignkey'
    )
    op.drop_column('subscription_charges', 'plan_id')
    op.drop_index('uq_subscriptions_one_live_per_user_plan', table_name='subscriptions')
    op.create_index(
        'uq_subscriptions_one_live_per_user_plan', 'subscriptions', ['user_id', 'plan_id'],
        unique=True, postgresql_where=sa.text(_LIVE),
    )  # fmt: skip
    op.drop_column('subscriptions', 'anchor_offset')
    op.drop_column('subscriptions', 'plan_code')
    op.drop_constraint('uq_plans_code_version', 'plans', type_='unique')
    op.create_unique_constraint('uq_plans_code', 'plans', ['code'])
    op.drop_constraint(op.f('ck_plans_version_positive'), 'plans', type_='check')
    op.drop_column('plans', 'version')
