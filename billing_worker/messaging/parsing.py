"""Reading a message: its body against its contract, or a NestJS packet's `data`.

What can never be handled raises `InvalidMessage` with a reason (and per-field errors)
that never echoes the hostile input; the pipeline (billing_worker/messaging/pipeline.py)
answers it with `invalid_message` and dead-letters the message. Nothing here logs,
publishes or acknowledges: this module only reads bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from billing_worker.messaging import nestjs

MAX_BODY_BYTES = 1024 * 1024


class InvalidMessage(ValueError):
    """The message can never be handled: not JSON, not the contract, too large."""

    def __init__(self, reason: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = dict(details or {})


Parser = Callable[[bytes, Mapping[str, Any]], Any]


def contract_parser(model: Any) -> Parser:
    """Validate a JSON body against a pydantic contract model, strictly."""

    def parse(body: bytes, headers: Mapping[str, Any]) -> Any:
        if len(body) > MAX_BODY_BYTES:
            raise InvalidMessage(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as invalid:
            raise InvalidMessage(*describe(invalid)) from None
        if b"\\u0000" in body:  # JSON carries NUL only escaped; PostgreSQL text cannot store it
            field = _nul_field(parsed)
            if field is not None:
                error = "a string may not contain the NUL character (U+0000)"
                raise InvalidMessage(
                    f"{field}: {error}", {"errors": [{"field": field, "error": error}]}
                )
        return parsed

    return parse


def _nul_field(value: Any, path: tuple[str | int, ...] = ()) -> str | None:
    """The first field (dotted path) whose string holds a NUL character, if any."""
    if isinstance(value, str):
        return (".".join(str(part) for part in path) or "(body)") if "\x00" in value else None
    items: Any
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nul_field(item, (*path, key))
        if found is not None:
            return found
    return None


def describe(invalid: ValidationError) -> tuple[str, dict[str, Any]]:
    """A one-line reason and the per-field errors, without echoing the (hostile) input."""
    problems = [
        {"field": ".".join(str(part) for part in error["loc"]) or "(body)", "error": error["msg"]}
        for error in invalid.errors(include_input=False, include_url=False)[:20]
    ]
    first = problems[0]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{first['field']}: {first['error']}{more}", {"errors": problems}


def parse_payload(
    parser: Parser,
    patterns: frozenset[str],
    raw: AbstractIncomingMessage,
    packet: nestjs.Packet | None,
) -> Any:
    """A route's payload of a message: its body, or a NestJS packet's `data` (whose
    pattern must be one of the route's `patterns`)."""
    if packet is None:
        return parser(raw.body, raw.headers or {})
    if packet.pattern is not None and packet.pattern not in patterns:
        accepted = " or ".join(sorted(patterns))
        raise InvalidMessage(f"pattern {packet.pattern[:200]!r} is not {accepted}")
    return parser(packet.data, raw.headers or {})


def user_id_of(body: bytes) -> str | None:
    """The user a message is about, when it says (only for the log line; never trusted)."""
    marker = body.find(b'"user_id"')
    if marker < 0 or len(body) > MAX_BODY_BYTES:
        return None
    try:
        parsed = json.loads(body)
        value = parsed.get("user_id")
        if value is None and isinstance(parsed.get("data"), dict):  # a NestJS packet
            value = parsed["data"].get("user_id")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: deeply nested
        return None
    return value if isinstance(value, str) else None
