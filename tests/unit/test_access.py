"""The access policy file, the sender of a message, and start-up with a bad policy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing_contracts import names
from billing_worker.access import Access, AccessPolicy, AccessPolicyError, broker_login, load_policy
from billing_worker.app import access_for
from billing_worker.messaging.topology import ALL_WORK_QUEUES
from billing_worker.settings import Settings

QUEUES = (*ALL_WORK_QUEUES, names.PROVIDER_EVENTS_QUEUE, names.ORDER_CREATED_QUEUE)
GOOD = """
[users."orders-service"]
allow = ["billing.wallet.*", "billing.invoice.*", "billing.orders.order-created"]

[users."billing-relay"]
allow = ["billing.provider-events"]
"""


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_policy_allows_by_queue_pattern_and_nothing_else(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, GOOD), QUEUES)

    assert policy.allows("orders-service", names.WALLET_DEPOSIT)
    assert policy.allows("orders-service", names.ORDER_CREATED_QUEUE)
    assert not policy.allows("orders-service", names.PLAN_UPSERT)
    assert not policy.allows("orders-service", names.PROVIDER_EVENTS_QUEUE)
    assert policy.allows("billing-relay", names.PROVIDER_EVENTS_QUEUE)
    assert not policy.allows("billing-relay", names.WALLET_DEPOSIT)
    assert not policy.allows("ORDERS-SERVICE", names.WALLET_DEPOSIT)  # names are exact
    assert not policy.allows("nobody", names.WALLET_BALANCE)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("users = [", "is not TOML"),
        ("", "names no users"),
        ('[users."a"]\nallow = "billing.*"\n', "allow must be a list"),
        ('[users."a"]\nallow = [""]\n', "allow must be a list of non-empty strings"),
        ('[users."a"]\nalow = ["*"]\n', "needs exactly one key"),
        ('[users."a"]\nallow = ["*"]\n[admins]\n', "unknown top-level key 'admins'"),
        ('[users."a"]\nallow = ["billing.walet.*"]\n', "matches no queue"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_one_line_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    with pytest.raises(AccessPolicyError) as refused:
        load_policy(policy_file(tmp_path, text), QUEUES)

    assert reason in str(refused.value)
    assert "\n" not in str(refused.value)
    assert str(tmp_path / "policy.toml") in str(refused.value)


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccessPolicyError, match=r"cannot read the access policy .*No such file"):
        load_policy(tmp_path / "absent.toml", QUEUES)


def test_the_worker_login_is_the_urls_decoded_user() -> None:
    assert broker_login("amqp://billing-worker:pw@rabbitmq:5672/billing") == "billing-worker"
    assert broker_login("amqp://a%40b:pw@rabbitmq/") == "a@b"
    assert broker_login("amqp://rabbitmq/") == "guest"  # aio-pika's default login


def test_the_sender_is_the_user_id_or_for_the_workers_own_copies_the_header() -> None:
    access = Access("worker", AccessPolicy({"shop": ("billing.wallet.*",)}))
    sender = names.SENDER_HEADER

    assert access.sender("shop", {}) == "shop"
    assert access.sender("shop", {sender: "admin"}) == "shop"  # a client's header is ignored
    assert access.sender(None, {sender: "admin"}) is None
    assert access.sender("worker", {}) == "worker"  # the worker's own message
    assert access.sender("worker", {sender: "shop"}) == "shop"  # a copy it republished
    assert access.sender("worker", {sender: b"shop"}) == "shop"
    assert access.sender("worker", {sender: ""}) is None  # a copy of an unknown sender

    assert access.refusal(names.WALLET_DEPOSIT, "shop", {}) is None
    assert access.refusal(names.WALLET_DEPOSIT, "worker", {}) is None
    assert access.refusal(names.PLAN_UPSERT, "worker", {}) is None
    assert access.refusal(names.PLAN_UPSERT, "shop", {}) == (
        "broker user 'shop' may not send to billing.plan.upsert"
    )
    assert access.refusal(names.PLAN_UPSERT, "worker", {sender: "shop"}) is not None
    assert access.refusal(names.WALLET_DEPOSIT, None, {}) is not None
    assert access.refusal(names.WALLET_DEPOSIT, "worker", {sender: ""}) is not None


def test_copies_name_the_original_sender_and_an_unknown_one_as_empty() -> None:
    access = Access("worker")
    assert access.copy_headers("shop", {names.SENDER_HEADER: "admin"}) == {
        names.SENDER_HEADER: "shop"
    }
    assert access.copy_headers("worker", {}) == {names.SENDER_HEADER: "worker"}
    assert access.copy_headers(None, {}) == {names.SENDER_HEADER: ""}


def test_with_the_policy_off_anyone_may_send_and_start_up_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.access_policy is None
    with caplog.at_level(logging.INFO, logger="billing_worker.app"):
        access = access_for(settings, "guest", list(QUEUES))

    assert access.policy is None
    assert access.refusal(names.PLAN_UPSERT, None, {}) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "any broker user may send any command" in warnings[0].getMessage()


def test_an_empty_setting_is_unset() -> None:
    assert Settings(_env_file=None, access_policy="").access_policy is None  # type: ignore[call-arg]


def test_run_with_a_missing_policy_exits_2_with_one_line(tmp_path: Path) -> None:
    """The policy is read before any connection: no services are needed to see it fail."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BILLING_ACCESS_POLICY": str(tmp_path / "absent.toml"),
        "BILLING_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "BILLING_RABBITMQ_URL": "amqp://nobody:x@127.0.0.1:1/",
    }
    done = subprocess.run(
        [sys.executable, "-m", "billing_worker", "run"], env=env, capture_output=True,
        text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("billing-worker run: cannot read the access policy"), lines
    assert "Traceback" not in done.stderr
