"""pause and seats: the `paused` status, a scheduled pause, re-anchored periods, quantity

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01

- `subscriptions.status` may be `paused`, which is live: the one-live-per-user-plan
  index (per plan code since 0011) counts it (dropped and created again with it).
- `pause_at_period_end` (a pause that takes effect when the paid period ends) and
  `paused_until` (when a pause ends by itself).
- `restarts` (unpauses so far: part of the charge ids, so a period re-anchored by an
  unpause (`anchor_offset`, migration 0011) never reuses an earlier attempt's id).
- `quantity` (seats, 1..10000): each period charges the plan's price times it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0013'
down_revision: str | Sequence[str] | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled")
_LIVE = ("incomplete", "trialing", "active", "past_due")
_LIVE_INDEX = "uq_subscriptions_one_live_per_user_plan"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _statuses(statuses: Sequence[str], live: Sequence[str]) -> None:
    op.drop_constraint(op.f("ck_subscriptions_status"), "subscriptions", type_="check")
    op.create_check_constraint(op.f("ck_subscriptions_status"), "subscriptions",
                               _in("status", statuses))  # fmt: skip
    op.drop_index(_LIVE_INDEX, table_name="subscriptions")
    op.create_index(_LIVE_INDEX, "subscriptions", ["user_id", "plan_code"], unique=True,
                    postgresql_where=sa.text(_in("status", live)))  # fmt: skip


def upgrade() -> None:
    _statuses((*_STATUSES, "paused"), (*_LIVE, "paused"))
    op.add_column('subscriptions', sa.Column(
        'pause_at_period_end', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('subscriptions', sa.Column(
        'paused_until', sa.DateTime(timezone=True), nullable=True))
    op.add_column('subscriptions', sa.Column(
        'restarts', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('subscriptions', sa.Column(
        'quantity', sa.Integer(), server_default=sa.text('1'), nullable=False))
    op.create_check_constraint(
        op.f('ck_subscriptions_quantity_range'), 'subscriptions',
        'quantity BETWEEN 1 AND 10000')  # fmt: skip


def downgrade() -> None:
    op.execute("UPDATE subscriptions SET status = 'active' WHERE status = 'paused'")
    op.drop_constraint(op.f('ck_subscriptions_quantity_range'), 'subscriptions', type_='check')
    for column in ('quantity', 'restarts', 'paused_until', 'pause_at_period_end'):
        op.drop_column('subscriptions', column)
    _statuses(_STATUSES, _LIVE)
