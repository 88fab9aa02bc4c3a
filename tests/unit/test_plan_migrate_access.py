"""Who may send `billing.plan.migrate`: like an admin credit, only a broker user the policy
names for it by its exact name (a `billing.plan.*` wildcard grants nothing), and nobody
while the policy is off unless the development setting opens it."""

from __future__ import annotations

from pathlib import Path

from billing_contracts import names
from billing_worker.access import PRIVILEGED, Access, AccessPolicy, load_policy
from billing_worker.messaging.topology import ALL_WORK_QUEUES

MIGRATE = names.PLAN_MIGRATE
ROOT = Path(__file__).resolve().parents[2]
QUEUES = (*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE)


def test_a_plan_wildcard_grants_upsert_but_never_migrate() -> None:
    assert MIGRATE in PRIVILEGED
    policy = AccessPolicy({"ops": ("billing.plan.*",), "root": ("*",), "admin": (MIGRATE,)})
    assert policy.allows("ops", names.PLAN_UPSERT)
    assert not policy.allows("ops", MIGRATE)
    assert not policy.allows("root", MIGRATE)
    assert policy.allows("admin", MIGRATE)
    access = Access("worker", policy)
    assert access.refusal(MIGRATE, "ops", {}) == f"broker user 'ops' may not send to {MIGRATE}"
    assert access.refusal(MIGRATE, "worker", {}) is not None  # not even the worker's own user
    assert access.refusal(MIGRATE, "admin", {}) is None


def test_without_a_policy_nobody_may_migrate_unless_development_opens_it() -> None:
    assert Access("guest").refusal(MIGRATE, "guest", {}) is not None
    assert Access("guest", privileged_without_policy=True).refusal(MIGRATE, "guest", {}) is None


def test_the_deploy_policy_lets_only_the_admin_migrate() -> None:
    assert MIGRATE in ALL_WORK_QUEUES
    policy = load_policy(ROOT / "deploy" / "access-policy.toml", QUEUES)
    assert {user for user in policy.users if policy.allows(user, MIGRATE)} == {"billing-admin"}
    assert policy.allows("billing-admin", names.PLAN_UPSERT)
