"""The holds' statements (`SqlHolds` in `db/holds.py` runs them).

An account's `held_minor` moves only by conditional updates on the locked row, like
its balance (`db/wallet_sql.py`): a hold reserves only what is available
(`balance_minor - held_minor >= amount`, read from the row once its lock is ours), so
concurrent holds, withdrawals and charges can never take more than the balance; the
CHECK `balance_minor - held_minor >= 0` stands behind it.
"""

from __future__ import annotations

RESERVE = """
WITH previous AS (
    SELECT id, balance_minor, held_minor, low_balance_alerted FROM virtual_accounts
    WHERE user_id = $1 AND currency = $2 FOR UPDATE
)
UPDATE virtual_accounts AS a
SET held_minor = a.held_minor + $3, updated_at = now()
FROM previous
WHERE a.id = previous.id AND previous.balance_minor - previous.held_minor >= $3
RETURNING a.id, a.balance_minor, a.held_minor,
          previous.low_balance_alerted AS was_low, a.low_balance_alerted AS is_low
"""

# An open hold ends: $2 leaves the holds, $3 of it (a capture) leaves the balance; the
# low-balance flag moves as a withdrawal's does when the balance goes down.
UNRESERVE = """
WITH previous AS (
    SELECT id, low_balance_alerted FROM virtual_accounts WHERE id = $1 FOR UPDATE
)
UPDATE virtual_accounts AS a
SET held_minor = a.held_minor - $2,
    balance_minor = a.balance_minor - $3,
    low_balance_alerted = CASE WHEN $3 > 0 THEN a.balance_minor - $3 < $4
                               ELSE a.low_balance_alerted END,
    updated_at = now()
FROM previous
WHERE a.id = previous.id AND a.held_minor >= $2
RETURNING a.id, a.balance_minor, a.held_minor,
          previous.low_balance_alerted AS was_low, a.low_balance_alerted AS is_low
"""

COLUMNS = (
    "id, user_id, account_id, currency, amount_minor, status, expires_at, created_at, "
    "reference, captured_minor, capture_transaction_id, closed_at"
)

INSERT = """
WITH created AS (
    INSERT INTO holds (id, user_id, account_id, currency, amount_minor, status, reference,
                       expires_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $8)
    RETURNING id
)
INSERT INTO hold_transitions (hold_id, from_status, to_status, reason, at)
SELECT id, NULL, 'open', $9, $8 FROM created
"""

GET = f"SELECT {COLUMNS} FROM holds WHERE id = $1"  # noqa: S608 - constant columns

# Only an open hold closes, once: the audit row goes with the move.
CLOSE = f"""
WITH closed AS (
    UPDATE holds
    SET status = $2, captured_minor = $3, capture_transaction_id = $4, closed_at = $5,
        updated_at = $5
    WHERE id = $1 AND status = 'open'
    RETURNING {COLUMNS}
), audit AS (
    INSERT INTO hold_transitions (hold_id, from_status, to_status, reason, at)
    SELECT id, 'open', $2, $6, $5 FROM closed
)
SELECT * FROM closed
"""  # noqa: S608 - constant columns

# Open holds past their expiry, oldest first; a hold a capture (or another replica) has
# locked is skipped, and one captured meanwhile no longer matches once locked.
DUE = f"""
SELECT {COLUMNS} FROM holds
WHERE status = 'open' AND expires_at <= $1
ORDER BY expires_at LIMIT $2
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 - constant columns

# The accounts of a batch of holds, locked in one order (no deadlock between replicas).
LOCK_ACCOUNTS = "SELECT id FROM virtual_accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"

# The same for many (user, currency or NULL) at once: the rows of request n have n.
BALANCES_MANY = """
SELECT q.n, a.currency, a.balance_minor, a.held_minor
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(user_id, currency, n)
JOIN virtual_accounts AS a
  ON a.user_id = q.user_id AND (q.currency IS NULL OR a.currency = q.currency)
ORDER BY q.n, a.currency
"""

BALANCES = (
    "SELECT currency, balance_minor, held_minor FROM virtual_accounts "
    "WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2) ORDER BY currency"
)
