"""The replies of commands and queries, and which stored reply a command may replay."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from billing_contracts.envelope import Command, ErrorBody, ErrorCode, ErrorReply, OkReply
from billing_worker.db.idempotency import user_scope
from billing_worker.domain.errors import BillingError, IdempotencyConflict

Reply = dict[str, Any]


_Ok = OkReply[Any]  # the data's own model serialises it


def ok(data: BaseModel | None) -> Reply:
    """`{"ok": true, "data": ...}`, built by the contract's `OkReply`."""
    return _Ok(data=data).model_dump(mode="json")


def error(code: ErrorCode, message: str, details: Mapping[str, Any] | None = None) -> Reply:
    """`{"ok": false, "error": {...}}`, built by the contract's `ErrorReply`."""
    body = ErrorBody(code=code, message=message, details=dict(details or {}))
    return ErrorReply(error=body).model_dump(mode="json")


def refusal_reply(refusal: BillingError) -> Reply:
    """The error reply of a refusal."""
    return error(refusal.code, refusal.message, refusal.details)


def request_hash(command: Command) -> str:
    body = command.model_dump_json(exclude={"idempotency_key"})
    return hashlib.sha256(body.encode()).hexdigest()


def command_scope(queue_scope: str, command: Command) -> str:
    """Where the command's idempotency record lives: its queue and its user, if any."""
    user_id = getattr(command, "user_id", None)
    return user_scope(queue_scope, None if user_id is None else str(user_id))


def conflict(key: str) -> Reply:
    return refusal_reply(
        IdempotencyConflict(
            "this idempotency key was already used with a different payload", idempotency_key=key
        )
    )


def replay(stored_hash: str, reply: Reply | None, digest: str, key: str) -> Reply:
    """The stored reply, for the very command it answered; else `idempotency_conflict`."""
    if stored_hash != digest:
        return conflict(key)
    assert reply is not None, "command records always carry their reply"
    return reply
