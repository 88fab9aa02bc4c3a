"""The audit's checks of plan versions (`ops/audit.py` runs them with the others).

No subscription renewed on a plan version it was not on: each paid period
(`subscription_charges.plan_id`) was charged on the version the subscription was on for
that period, as its history of moves (`subscription_plan_changes`, written by
`billing.plan.migrate`) tells; the history is one unbroken chain ending in the version
the subscription is on now, and never leaves its plan code.
"""

from __future__ import annotations

# The version a subscription was on for period i: the target of its last move from a
# period <= i; before any move, the source of its first move; never moved, its own.
VERSION_CHECKS: dict[str, str] = {
    "subscription period charged on a plan version it was not on": """
        SELECT c.subscription_id, c.period_index, c.plan_id AS charged_plan_id,
               e.expected_plan_id
        FROM subscription_charges c
        JOIN subscriptions s ON s.id = c.subscription_id
        CROSS JOIN LATERAL (
            SELECT coalesce(
                (SELECT m.to_plan_id FROM subscription_plan_changes m
                 WHERE m.subscription_id = c.subscription_id
                   AND m.from_period_index <= c.period_index
                 ORDER BY m.id DESC LIMIT 1),
                (SELECT m.from_plan_id FROM subscription_plan_changes m
                 WHERE m.subscription_id = c.subscription_id ORDER BY m.id LIMIT 1),
                s.plan_id) AS expected_plan_id
        ) e
        WHERE c.plan_id IS DISTINCT FROM e.expected_plan_id
    """,
    "subscription whose plan version history is broken or leaves its plan code": """
        SELECT s.id AS subscription_id, s.plan_code, s.plan_id, m.id AS change_id,
               m.from_plan_id, m.to_plan_id
        FROM subscriptions s
        JOIN plans p ON p.id = s.plan_id
        LEFT JOIN LATERAL (
            SELECT m.id, m.kind, m.from_plan_id, m.to_plan_id,
                   lag(m.to_plan_id) OVER (ORDER BY m.id) AS previous_to,
                   lead(m.id) OVER (ORDER BY m.id) AS next_id
            FROM subscription_plan_changes m WHERE m.subscription_id = s.id
        ) m ON true
        LEFT JOIN plans pf ON pf.id = m.from_plan_id
        LEFT JOIN plans pt ON pt.id = m.to_plan_id
        WHERE p.code <> s.plan_code
           OR (m.kind = 'migrate' AND pf.code <> pt.code)
           OR m.previous_to <> m.from_plan_id
           OR (m.id IS NOT NULL AND m.next_id IS NULL AND m.to_plan_id <> s.plan_id)
    """,
}
