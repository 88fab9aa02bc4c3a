"""The audit's checks of holds (`ops/audit.py` runs them with the others).

An account's `held_minor` is exactly the sum of its open holds and never more than its
balance; a captured hold took at most its amount, through one completed withdrawal of
exactly what it captured; every hold's trail ends in its status and makes only moves the
state machine allows (`domain/holds.py`).
"""

from __future__ import annotations

HOLD_CHECKS: dict[str, str] = {
    "account whose held amount is not the sum of its open holds, or exceeds its balance": """
        SELECT a.id AS account_id, a.user_id, a.currency, a.balance_minor, a.held_minor,
               coalesce(h.open_minor, 0) AS open_holds_minor
        FROM virtual_accounts a
        LEFT JOIN (
            SELECT account_id, sum(amount_minor) AS open_minor FROM holds
            WHERE status = 'open' GROUP BY account_id
        ) h ON h.account_id = a.id
        WHERE a.held_minor <> coalesce(h.open_minor, 0) OR a.held_minor > a.balance_minor
           OR a.held_minor < 0
    """,
    "captured hold without one completed withdrawal of what it captured": """
        SELECT h.id, h.status, h.amount_minor, h.captured_minor, t.id AS transaction_id,
               t.kind, t.status AS transaction_status, t.amount_minor AS transaction_minor
        FROM holds h LEFT JOIN transactions t ON t.id = h.capture_transaction_id
        WHERE h.captured_minor > h.amount_minor
           OR (h.status = 'captured' AND (t.id IS NULL OR t.kind <> 'withdrawal'
               OR t.status <> 'completed' OR t.amount_minor <> h.captured_minor
               OR t.account_id <> h.account_id OR t.reference <> h.id::text))
    """,
    "hold whose audit trail does not end in its status": """
        SELECT h.id, h.status, last.to_status AS last_recorded
        FROM holds h
        LEFT JOIN LATERAL (
            SELECT to_status FROM hold_transitions ht
            WHERE ht.hold_id = h.id ORDER BY ht.id DESC LIMIT 1
        ) last ON true
        WHERE last.to_status IS DISTINCT FROM h.status
    """,
    "hold trail with a move the state machine forbids": """
        SELECT hold_id, from_status, to_status, at FROM hold_transitions
        WHERE (coalesce(from_status, '-'), to_status) NOT IN (
            ('-', 'open'), ('open', 'captured'), ('open', 'released'), ('open', 'expired'))
    """,
}
