"""Reply and event envelopes shared by every message."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, Literal, Self, TypeVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


class ErrorCode(StrEnum):
    """Every error a reply can carry (the README's error-code table explains each)."""

    INVALID_MESSAGE = "invalid_message"
    NOT_FOUND = "not_found"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVALID_STATE = "invalid_state"
    CURRENCY_MISMATCH = "currency_mismatch"
    PROVIDER_ERROR = "provider_error"
    INTERNAL_ERROR = "internal_error"
    # The broker user that sent the message (its AMQP user_id) may not send to that queue.
    FORBIDDEN = "forbidden"


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class OkReply(BaseModel, Generic[T]):
    """`{"ok": true, "data": {...}}`"""

    ok: Literal[True] = True
    data: T


class ErrorReply(BaseModel):
    """`{"ok": false, "error": {"code": ..., "message": ..., "details": {...}}}`"""

    ok: Literal[False] = False
    error: ErrorBody


class EventEnvelope(BaseModel, Generic[T]):
    """Every event on `billing.events`; AMQP `message_id` = `event_id`, `type` = `type`.

    `pattern` repeats `type` for NestJS's `@EventPattern` (which reads only
    `body.pattern`); events of workers before it have none. Fields an envelope gains
    later are ignored, so a consumer need not be upgraded before the worker that adds
    them (version 1 envelopes only ever gain optional fields)."""

    model_config = ConfigDict(extra="ignore")

    event_id: UUID
    type: str = Field(examples=["payment.success"])
    pattern: str | None = Field(
        default=None,
        description="The event type again, for NestJS's @EventPattern",
        examples=["payment.success"],
    )
    occurred_at: AwareDatetime
    version: Literal[1] = 1
    data: T

    @model_validator(mode="after")
    def _pattern_is_type(self) -> Self:
        if self.pattern is not None and self.pattern != self.type:
            raise ValueError(f"pattern {self.pattern!r} is not the type {self.type!r}")
        return self


class Command(BaseModel):
    """Base of every command: strict, closed, idempotent by its key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str = Field(
        min_length=1,
        max_length=255,
        description="Same key + same payload returns the first reply; same key + other "
        "payload is `idempotency_conflict`.",
        examples=["order-42-deposit"],
    )


class Query(BaseModel):
    """Base of every query: strict and closed; queries change nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
