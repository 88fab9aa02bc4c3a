"""invoice card payments: an invoice paid through Stripe or YooKassa

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-01

- `provider_intents.kind` may be `invoice_card`: `billing.invoice.pay` with `source`
  `stripe` / `yookassa`, a provider payment of the invoice total being made. Its payment
  is a `deposit` transaction naming the invoice (`transactions.invoice_id`, which exists
  since 0001): credited to the wallet when the provider confirms it, then the invoice is
  paid from it by an `invoice_payment` (or, for a period invoice, its period charge).
  No data changes: no intent of the new kind exists before.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0017'
down_revision: str | Sequence[str] | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INTENT_KINDS = (
    "deposit", "yookassa_subscription", "yookassa_renewal", "stripe_subscription", "stripe_cancel",
    "refund", "deposit_cancel", "payment_method_setup",
)  # fmt: skip


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    _replace_check("provider_intents", "kind", _in("kind", (*_INTENT_KINDS, "invoice_card")))


def downgrade() -> None:
    op.execute("DELETE FROM provider_intents WHERE kind = 'invoice_card'")
    _replace_check("provider_intents", "kind", _in("kind", _INTENT_KINDS))
