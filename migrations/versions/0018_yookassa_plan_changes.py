"""a prorated change-plan of a YooKassa subscription, paid by its saved method

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01

- `subscriptions` gains the change waiting for its payment (`billing.subscription.
  change-plan` with `when` = `now` and `proration` = `prorate`, an upgrade of a YooKassa
  subscription): `pending_plan_id` (the target version row), `pending_quantity` and
  `pending_invoice_id` (the open proration invoice its YooKassa payment pays), all or
  none. The subscription switches when YooKassa confirms that payment and the invoice
  is paid (the same transaction clears them); a failed or canceled payment clears them
  and voids the invoice. `pending_invoice_id` has no foreign key (invoices already name
  subscriptions; the pair would be a cycle): the handler writes both in one transaction.
- `provider_intents.kind` may be `plan_change_card`: that payment being made (a `deposit`
  transaction naming the invoice and the subscription, as `invoice_card` is).
  Existing rows: every subscription without a pending change, no intent of the new kind.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0018'
down_revision: str | Sequence[str] | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INTENT_KINDS = (
    "deposit", "yookassa_subscription", "yookassa_renewal", "stripe_subscription", "stripe_cancel",
    "refund", "deposit_cancel", "payment_method_setup", "invoice_card",
)  # fmt: skip
_PENDING = (
    "(pending_plan_id IS NULL) = (pending_quantity IS NULL) "
    "AND (pending_plan_id IS NULL) = (pending_invoice_id IS NULL) "
    "AND (pending_quantity IS NULL OR pending_quantity BETWEEN 1 AND 10000)"
)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    _replace_check("provider_intents", "kind", _in("kind", (*_INTENT_KINDS, "plan_change_card")))
    op.add_column("subscriptions", sa.Column("pending_plan_id", sa.Uuid(), nullable=True))
    op.add_column("subscriptions", sa.Column("pending_quantity", sa.Integer(), nullable=True))
    op.add_column("subscriptions", sa.Column("pending_invoice_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_subscriptions_pending_plan_id_plans"), "subscriptions", "plans",
        ["pending_plan_id"], ["id"])  # fmt: skip
    op.create_check_constraint(op.f("ck_subscriptions_pending_change"), "subscriptions", _PENDING)


def downgrade() -> None:
    op.drop_constraint(op.f("ck_subscriptions_pending_change"), "subscriptions", type_="check")
    op.drop_constraint(op.f("fk_subscriptions_pending_plan_id_plans"), "subscriptions",
                       type_="foreignkey")  # fmt: skip
    for column in ("pending_invoice_id", "pending_quantity", "pending_plan_id"):
        op.drop_column("subscriptions", column)
    op.execute("DELETE FROM provider_intents WHERE kind = 'plan_change_card'")
    _replace_check("provider_intents", "kind", _in("kind", _INTENT_KINDS))
