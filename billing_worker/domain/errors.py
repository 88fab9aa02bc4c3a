"""Named domain errors; each maps to one error code of the wire contract."""

from __future__ import annotations

from typing import Any

from billing_contracts.envelope import ErrorCode


class BillingError(Exception):
    """A refusal the caller should see as a normal error reply (not a dead letter)."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(BillingError):
    code = ErrorCode.NOT_FOUND


class IdempotencyConflict(BillingError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT


class InsufficientFunds(BillingError):
    code = ErrorCode.INSUFFICIENT_FUNDS


class InvalidState(BillingError):
    code = ErrorCode.INVALID_STATE


class CurrencyMismatch(BillingError):
    code = ErrorCode.CURRENCY_MISMATCH


class ProviderError(BillingError):
    code = ErrorCode.PROVIDER_ERROR


class InvalidInput(BillingError):
    """Valid by the schema but not acceptable (e.g. a malformed cursor)."""

    code = ErrorCode.INVALID_MESSAGE


class TransientError(Exception):
    """A failure worth retrying later (provider timeout, database restart)."""


class Unprocessable(Exception):
    """Retrying cannot help and nothing was changed: dead-letter it for an operator."""


class WriteConflict(Exception):
    """A concurrent transaction got in the way (the database reported a deadlock, a
    serialization failure or a unique key taken): the transaction rolled back, and
    another attempt sees what the other one committed. The repositories raise it for
    what asyncpg reports (`db/errors.py`); `constraint` names the unique key, if any.

    Not a refusal (`BillingError`) and not a `TransientError`: the service retries the
    command at once, and anything else treats it like any other failure, as before."""

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class DuplicateKey(WriteConflict):
    """A unique key another transaction already holds (`constraint`)."""
