"""Replies and events are built by the contract's own models, so they cannot drift from
the AsyncAPI document callers generate code from."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from billing_contracts.envelope import ErrorCode, ErrorReply, EventEnvelope, OkReply
from billing_contracts.wallet import BalanceResult
from billing_worker.db.uow import event_message
from billing_worker.domain.events import DomainEvent
from billing_worker.replies import error, ok


def test_an_ok_reply_is_the_contracts_ok_reply() -> None:
    data = BalanceResult(user_id="u-1", accounts=[])
    reply = ok(data)
    assert reply == {"ok": True, "data": {"user_id": "u-1", "accounts": []}}
    assert OkReply[BalanceResult].model_validate(reply).data == data
    assert ok(None) == {"ok": True, "data": None}


def test_an_error_reply_is_the_contracts_error_reply() -> None:
    reply = error(ErrorCode.INSUFFICIENT_FUNDS, "not enough", {"available": "1.00"})
    assert reply == {
        "ok": False,
        "error": {
            "code": "insufficient_funds",
            "message": "not enough",
            "details": {"available": "1.00"},
        },
    }
    assert ErrorReply.model_validate(reply).error.code is ErrorCode.INSUFFICIENT_FUNDS
    assert error(ErrorCode.NOT_FOUND, "gone")["error"]["details"] == {}


def test_an_event_body_is_the_contracts_envelope_with_utc_z_timestamps() -> None:
    moscow = timezone(timedelta(hours=3))
    event = DomainEvent(
        "deposit.completed",
        {"user_id": "u-1", "amount": {"amount": "1.00", "currency": "USD"}},
        occurred_at=datetime(2026, 12, 1, 15, 0, 0, 123456, tzinfo=moscow),
    )
    message = event_message(event)
    body: dict[str, Any] = json.loads(message.body)
    assert list(body) == ["event_id", "type", "pattern", "occurred_at", "version", "data"]
    assert body["occurred_at"] == "2026-12-01T12:00:00.123456Z"
    envelope = EventEnvelope[dict[str, Any]].model_validate(body)
    assert envelope.event_id == event.event_id == message.event_id
    assert envelope.type == envelope.pattern == message.routing_key == "deposit.completed"
    assert envelope.occurred_at == event.occurred_at.astimezone(UTC)
    assert envelope.data == event.data
