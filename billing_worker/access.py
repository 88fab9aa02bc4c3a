"""Who may send what: the access policy of every consumed message.

RabbitMQ refuses a publish whose AMQP `user_id` property is not the publishing
connection's user, so on a consumed message `user_id` is the broker-validated sender.
The policy (`BILLING_ACCESS_POLICY`, a TOML file) maps broker users to the queues they
may send to, by fnmatch patterns:

    [users."orders-service"]
    allow = ["billing.wallet.*", "billing.invoice.*", "billing.orders.order-created"]

    [users."billing-relay"]
    allow = ["billing.provider-events"]

The worker's own user (the login of its AMQP URL) may always send: the sandbox's
callbacks come from it. Copies the worker republishes (retries, dead letters) can only
carry its own `user_id`, so they name the original sender in `x-billing-sender`; that
header is believed only on a message whose validated `user_id` is the worker's.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from billing_contracts import names
from billing_worker.startup import StartupError

DEFAULT_LOGIN = "guest"  # what aio-pika logs in as when the URL names no user

# Queues that make money out of nothing (admin credits), change what every subscriber
# of a plan pays (plan migrations) or what every new invoice charges (tax rates, coupons). A user
# may send to one only if the policy names it exactly — a wildcard written before it
# existed (`billing.wallet.*`, `*`) grants nothing — and, with the policy off, nobody may
# unless the worker was started with `BILLING_CREDIT_WITHOUT_POLICY=true` (local
# development). The worker's own user is no exception: it never sends one itself.
PRIVILEGED = frozenset(
    {names.WALLET_CREDIT, names.PLAN_MIGRATE, names.TAX_RATE_UPSERT, names.COUPON_UPSERT}
)


class AccessPolicyError(StartupError):
    """The policy file is missing or malformed; the message is the one-line reason."""


def broker_login(amqp_url: str) -> str:
    """The user an AMQP URL logs in as: the user_id RabbitMQ accepts from it."""
    username = urlsplit(amqp_url).username
    return unquote(username) if username else DEFAULT_LOGIN


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Broker user -> the queue-name patterns it may send to."""

    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""

    def allows(self, user: str, queue: str) -> bool:
        if queue in PRIVILEGED:  # only by its exact name
            return queue in self.users.get(user, ())
        return any(fnmatchcase(queue, pattern) for pattern in self.users.get(user, ()))


def load_policy(path: Path | str, queues: Iterable[str] = ()) -> AccessPolicy:
    """Read and check a policy file; `queues` are the queues the worker consumes (a
    pattern that matches none of them is a typo, refused rather than silently inert)."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise AccessPolicyError(f"cannot read the access policy {where}: {reason}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise AccessPolicyError(f"the access policy {where} is not TOML: {error}") from None
    return parse_policy(document, where, tuple(queues))


def parse_policy(document: Mapping[str, Any], where: str, queues: tuple[str, ...]) -> AccessPolicy:
    def bad(reason: str) -> AccessPolicyError:
        return AccessPolicyError(f"the access policy {where}: {reason}")

    extra = sorted(set(document) - {"users"})
    if extra:
        raise bad(f'unknown top-level key {extra[0]!r} (only [users."NAME"] tables)')
    users = document.get("users")
    if not isinstance(users, dict) or not users:
        raise bad('names no users (add [users."NAME"] tables with allow = [...])')
    parsed: dict[str, tuple[str, ...]] = {}
    for user, entry in users.items():
        if not user:
            raise bad("a user name is empty")
        if not isinstance(entry, dict) or set(entry) != {"allow"}:
            raise bad(f"user {user!r} needs exactly one key, allow = [queue patterns]")
        allow = entry["allow"]
        if not isinstance(allow, list) or not all(isinstance(p, str) and p for p in allow):
            raise bad(f"user {user!r}: allow must be a list of non-empty strings")
        for pattern in allow:
            if queues and not any(fnmatchcase(queue, pattern) for queue in queues):
                raise bad(f"user {user!r}: {pattern!r} matches no queue the worker consumes")
        parsed[user] = tuple(allow)
    return AccessPolicy(parsed, where)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Access:
    """The sender of each consumed message, and whether the policy lets it send it."""

    worker_user: str
    policy: AccessPolicy | None = None  # None: the policy is off, anyone may send anything
    privileged_without_policy: bool = False  # BILLING_CREDIT_WITHOUT_POLICY (development)

    def sender(self, user_id: str | None, headers: Mapping[str, Any]) -> str | None:
        """The validated original sender; None when the message does not say who sent it.

        A message from the worker's own user is either its own (no sender header) or a
        copy it republished (the header names the original sender, "" when unknown)."""
        if not user_id:
            return None
        if user_id != self.worker_user:
            return user_id
        if names.SENDER_HEADER not in headers:
            return self.worker_user
        return _text(headers[names.SENDER_HEADER]) or None

    def refusal(self, queue: str, user_id: str | None, headers: Mapping[str, Any]) -> str | None:
        """None when the message may be handled, else why not (one line)."""
        privileged = queue in PRIVILEGED
        if self.policy is None and not privileged:
            return None
        sender = self.sender(user_id, headers)
        if sender is None:
            return f"a message to {queue} must carry its sender's AMQP user_id"
        if self.policy is None:
            if self.privileged_without_policy:
                return None
            return (
                f"{queue} is refused while BILLING_ACCESS_POLICY is unset "
                "(BILLING_CREDIT_WITHOUT_POLICY=true opens it for local development)"
            )
        if (sender == self.worker_user and not privileged) or self.policy.allows(sender, queue):
            return None
        return f"broker user {sender!r} may not send to {queue}"

    def copy_headers(self, user_id: str | None, headers: Mapping[str, Any]) -> dict[str, str]:
        """What a republished copy carries so that its sender stays the original one."""
        return {names.SENDER_HEADER: self.sender(user_id, headers) or ""}
