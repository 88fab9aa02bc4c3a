"""Exceptions of the billing client and the mapping of reply envelopes onto them.

An error reply `{"ok": false, "error": {"code", "message", "details"}}` becomes the
exception of its code (`insufficient_funds` -> `InsufficientFunds`, ...); a code this
version does not know becomes a plain `BillingError` carrying that code, so a newer
worker never breaks an older client. Everything here needs pydantic alone (no broker),
so it can be used and tested without the `client` extra.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from billing_contracts.envelope import ErrorCode
from billing_contracts.money import Money

__all__ = [
    "ERRORS",
    "BillingError",
    "BillingTimeout",
    "BillingUnavailable",
    "CurrencyMismatch",
    "Forbidden",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InternalError",
    "InvalidMessage",
    "InvalidState",
    "MalformedReply",
    "NotFound",
    "ProviderError",
    "error_from_reply",
    "parse_reply",
]

R = TypeVar("R", bound=BaseModel)


class BillingError(Exception):
    """A call to the billing worker failed.

    `code` is the reply's error code (an `ErrorCode` member when this version knows it,
    else the raw string), or a client-side code (`timeout`, `unavailable`,
    `malformed_reply`); `message` is human-readable; `details` is the reply's `details`.
    """

    code: str

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        elif not hasattr(self, "code"):
            self.code = "unknown"
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidMessage(BillingError):
    """The worker refused the message's shape (`details.errors` lists the fields)."""

    code = ErrorCode.INVALID_MESSAGE


class NotFound(BillingError):
    """The plan, subscription or invoice does not exist."""

    code = ErrorCode.NOT_FOUND


class IdempotencyConflict(BillingError):
    """The idempotency key was used before with another payload."""

    code = ErrorCode.IDEMPOTENCY_CONFLICT


class InsufficientFunds(BillingError):
    """The account does not cover the amount; nothing was charged."""

    code = ErrorCode.INSUFFICIENT_FUNDS

    @property
    def balance(self) -> Money | None:
        """The balance the worker saw (`details.balance`), when the reply carries it."""
        try:
            return Money.model_validate(self.details["balance"])
        except (KeyError, ValidationError):
            return None


class InvalidState(BillingError):
    """The state machine refused the move (already paid, already subscribed, ...)."""

    code = ErrorCode.INVALID_STATE


class CurrencyMismatch(BillingError):
    """An amount is in another currency than the account or invoice."""

    code = ErrorCode.CURRENCY_MISMATCH


class ProviderError(BillingError):
    """The payment provider refused the request."""

    code = ErrorCode.PROVIDER_ERROR


class InternalError(BillingError):
    """The worker failed to handle the message and dead-lettered it."""

    code = ErrorCode.INTERNAL_ERROR


class Forbidden(BillingError):
    """The worker's access policy does not let this broker user send this message.

    Nothing was applied; retrying changes nothing until an operator allows the user
    (the connection's login, sent as the AMQP `user_id`) that queue.
    """

    code = ErrorCode.FORBIDDEN


class BillingTimeout(BillingError, TimeoutError):
    """No reply in time, or the connection dropped while waiting for it.

    The outcome is unknown: the worker may have applied the command. Retry with the
    same `idempotency_key` to get its reply without applying it twice.
    """

    code = "timeout"


class BillingUnavailable(BillingError, ConnectionError):
    """The broker could not be reached or refused the request (no such queue, a nack).

    Retrying a command with the same `idempotency_key` is always safe.
    """

    code = "unavailable"


class MalformedReply(BillingError):
    """The reply is not a reply envelope, or its data does not fit the contract model."""

    code = "malformed_reply"


ERRORS: Mapping[str, type[BillingError]] = {
    error.code: error
    for error in (
        InvalidMessage,
        NotFound,
        IdempotencyConflict,
        InsufficientFunds,
        InvalidState,
        CurrencyMismatch,
        ProviderError,
        InternalError,
        Forbidden,
    )
}


_CODES: Mapping[str, ErrorCode] = {member.value: member for member in ErrorCode}


def error_from_reply(error: Any) -> BillingError:
    """The exception for the `error` object of an error reply.

    An unknown code gives a plain `BillingError` with that code; a missing message or
    details are tolerated (the error is raised either way).
    """
    if not isinstance(error, Mapping):
        return MalformedReply(f"an error reply without an error object: {error!r:.200}")
    raw_code = error.get("code")
    code = str(raw_code) if raw_code is not None else "unknown"
    message = error.get("message")
    details = error.get("details")
    error_type = ERRORS.get(code, BillingError)
    code = _CODES.get(code, code)
    return error_type(
        message if isinstance(message, str) else code,
        code=code,
        details=details if isinstance(details, Mapping) else None,
    )


def parse_reply(body: bytes | str | Mapping[str, Any], model: type[R]) -> R:
    """The `data` of an ok reply as `model`; raises the `BillingError` of an error reply.

    `MalformedReply` when the body is not JSON, not an envelope, or its data fails
    `model`.
    """
    if isinstance(body, bytes | str):
        try:
            envelope = json.loads(body)
        except ValueError as error:
            raise MalformedReply(f"the reply is not JSON: {error}") from None
    else:
        envelope = body
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("ok"), bool):
        raise MalformedReply(f"the reply is not a reply envelope: {envelope!r:.200}")
    if not envelope["ok"]:
        raise error_from_reply(envelope.get("error"))
    if "data" not in envelope:
        raise MalformedReply("an ok reply without data")
    try:
        return model.model_validate(envelope["data"])
    except ValidationError as error:
        raise MalformedReply(
            f"the reply data is not a {model.__name__}: {error}",
            details={"errors": error.errors(include_url=False, include_input=False)},
        ) from None
