"""The wallet's statements (`SqlWallet` in `db/wallet.py` runs them).

Balances move only through `UPDATE ... SET balance_minor = balance_minor +/- $n` with the
guard in the WHERE clause, so concurrent commands can neither overdraw an account nor
lose an update (READ COMMITTED re-checks the guard on the newest row version).
"""

from __future__ import annotations

OPEN_ACCOUNT = """
WITH new_user AS (
    INSERT INTO billing_users (id, user_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING
), new_account AS (
    INSERT INTO virtual_accounts (id, user_id, currency) VALUES ($3, $2, $4)
    ON CONFLICT (user_id, currency) DO NOTHING RETURNING id
)
SELECT id FROM new_account
UNION ALL
SELECT id FROM virtual_accounts WHERE user_id = $2 AND currency = $4
LIMIT 1
"""

# The flag remembers whether `balance.low` was already sent for this dip below the
# threshold; it is re-armed as soon as the balance is back at or above it.
# The guard reads the balance from the locked row (`previous`, the newest version once
# the lock is ours), not from the UPDATE's own scan: that scan sees the statement's
# snapshot, and a stale balance failing the guard is never re-checked, so a withdrawal
# waiting on a deposit's lock would be refused on the balance from before the deposit.
# A debit may take only what is available: the balance less the open holds.
MOVE_BALANCE = """
WITH previous AS (
    SELECT id, balance_minor, held_minor, low_balance_alerted FROM virtual_accounts
    WHERE user_id = $1 AND currency = $2 FOR UPDATE
)
UPDATE virtual_accounts AS a
SET balance_minor = a.balance_minor + $3,
    low_balance_alerted = a.balance_minor + $3 < $4,
    updated_at = now()
FROM previous
WHERE a.id = previous.id AND previous.balance_minor - previous.held_minor + $3 >= 0
RETURNING a.id, a.balance_minor,
          previous.low_balance_alerted AS was_low, a.low_balance_alerted AS is_low
"""

# (user, currency, amount, threshold) debits in order, each seeing the ones before it.
DEBIT_MANY = "SELECT * FROM billing_debit_many($1::text[], $2::text[], $3::bigint[], $4::bigint[])"

BALANCES = (
    "SELECT currency, balance_minor FROM virtual_accounts "
    "WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2) ORDER BY currency"
)

INSERT_TRANSACTION = """
WITH created AS (
    INSERT INTO transactions (
        id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref,
        description, reference, failure_code, failure_message, created_at, updated_at,
        completed_at, metadata, subscription_id, invoice_id, refund_of, provider_confirmation
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16::jsonb,
              $20, $21, $22, $23::jsonb)
    RETURNING id
)
INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
SELECT created.id, step.source, step.target, step.reason, $14
FROM created, unnest($17::text[], $18::text[], $19::text[]) AS step(source, target, reason)
"""

# The TransactionRow fields of INSERT_MANY's first parameters, in order; then the
# metadata and the provider confirmations (JSON text), then the audit trail's columns.
MANY_COLUMNS = (
    "id", "user_id", "account_id", "kind", "status", "amount_minor", "currency", "provider",
    "provider_ref", "description", "reference", "failure_code", "failure_message",
    "created_at", "completed_at", "subscription_id", "invoice_id", "refund_of",
)  # fmt: skip
# Many transactions and all their audit rows in one statement: the rows as
# INSERT_TRANSACTION writes them one at a time, the audit rows in the order given.
INSERT_MANY = """
WITH created AS (
    INSERT INTO transactions (
        id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref,
        description, reference, failure_code, failure_message, created_at, updated_at,
        completed_at, subscription_id, invoice_id, refund_of, metadata, provider_confirmation
    )
    SELECT t.id, t.user_id, t.account_id, t.kind, t.status, t.amount_minor, t.currency,
           t.provider, t.provider_ref, t.description, t.reference, t.failure_code,
           t.failure_message, t.created_at, t.created_at, t.completed_at, t.subscription_id,
           t.invoice_id, t.refund_of, t.meta::jsonb, t.confirmation::jsonb
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::bigint[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::timestamptz[], $15::timestamptz[], $16::uuid[], $17::uuid[],
                $18::uuid[], $19::text[], $20::text[])
         AS t(id, user_id, account_id, kind, status, amount_minor, currency, provider,
              provider_ref, description, reference, failure_code, failure_message,
              created_at, completed_at, subscription_id, invoice_id, refund_of, meta,
              confirmation)
    RETURNING id
)
INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
SELECT s.transaction_id, s.source, s.target, s.reason, s.at
FROM unnest($21::uuid[], $22::text[], $23::text[], $24::text[], $25::timestamptz[])
     WITH ORDINALITY AS s(transaction_id, source, target, reason, at, n)
WHERE EXISTS (SELECT 1 FROM created)
ORDER BY s.n
"""

MOVE_TRANSACTION = """
WITH moved AS (
    UPDATE transactions
    SET status = $3, updated_at = $6,
        completed_at = CASE WHEN $3 IN ('completed', 'refunded') THEN coalesce(completed_at, $6)
                            ELSE completed_at END,
        failure_code = coalesce($4, failure_code),
        failure_message = coalesce($5, failure_message),
        provider_confirmation = coalesce($8::jsonb, provider_confirmation)
    WHERE id = $1 AND status = $2
    RETURNING *
), audit AS (
    INSERT INTO transaction_transitions (transaction_id, from_status, to_status, reason, at)
    SELECT id, $2, $3, $7, $6 FROM moved
)
SELECT * FROM moved
"""

REFUNDED_MINOR = (
    "SELECT coalesce(sum(amount_minor), 0) FROM transactions "
    "WHERE refund_of = $1 AND status = 'completed'"
)

SET_PROVIDER_REF = """
UPDATE transactions SET provider_ref = $2 WHERE id = $1
"""

COLUMNS = (
    "id, user_id, account_id, kind, status, amount_minor, currency, provider, provider_ref, "
    "created_at, completed_at, description, reference, failure_code, failure_message, "
    "subscription_id, invoice_id, refund_of, provider_confirmation"
)

# A payment intent (`created`, no provider reference yet) gets the provider's answer:
# its reference and, for a deposit, the account it will be credited to.
START_PAYMENT = f"""
UPDATE transactions
SET provider_ref = $2, account_id = coalesce($3, account_id), updated_at = $4
WHERE id = $1 AND status = 'created' AND provider_ref IS NULL
RETURNING {COLUMNS}
"""  # noqa: S608 - constant columns

# A payment intent the provider refused outright (nothing was created there): gone, with
# its audit trail, as a refused command leaves nothing behind.
DISCARD_CREATED = """
DELETE FROM transactions WHERE id = $1 AND status = 'created' AND provider_ref IS NULL
"""

GET = f"SELECT {COLUMNS} FROM transactions WHERE id = $1"  # noqa: S608 - constant columns

BY_REF = f"SELECT {COLUMNS} FROM transactions WHERE provider = $1 AND provider_ref = $2"  # noqa: S608

# Newest first; $3, $4: the (created_at, id) of the last row already seen.
PAGE = f"""
SELECT {COLUMNS} FROM transactions
WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2)
  AND (created_at, id) < (coalesce($3::timestamptz, 'infinity'), $4)
ORDER BY created_at DESC, id DESC LIMIT $5
"""  # noqa: S608 - only constant column names are formatted in

# Every refund of a payment, whatever its status (the ones in flight hold their amount).
REFUNDS_OF = f"SELECT {COLUMNS} FROM transactions WHERE refund_of = $1 ORDER BY created_at, id"  # noqa: S608
