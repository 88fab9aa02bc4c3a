"""NestJS on the wire, without a broker: the packet shape, the event envelope's `pattern`,
and the README's NestJS section quoting the service tests/nestjs runs."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from billing_contracts.catalog import ENTRIES
from billing_contracts.client import parse_event
from billing_contracts.envelope import EventEnvelope
from billing_contracts.events import DepositCompleted
from billing_worker.db.uow import event_message
from billing_worker.domain.events import DomainEvent
from billing_worker.messaging import nestjs

ROOT = Path(__file__).resolve().parents[2]
NESTJS_SRC = ROOT / "tests" / "nestjs" / "src"
USD = {"amount": "5.00", "currency": "USD"}
DEPOSIT_DATA = {"transaction_id": str(uuid.uuid4()), "user_id": "u", "amount": USD,
                "provider": "sandbox", "balance": USD}  # fmt: skip


def envelope(**fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": "deposit.completed",
            "occurred_at": "2031-01-01T00:00:00Z", "version": 1, "data": DEPOSIT_DATA,
            **fields}  # fmt: skip


# ---- the event envelope ----


def test_the_outbox_writes_the_type_again_as_pattern() -> None:
    body = json.loads(event_message(DomainEvent("payment.success", {"n": 1})).body)
    assert body["pattern"] == body["type"] == "payment.success"
    EventEnvelope[dict[str, Any]].model_validate(body)


def test_the_client_parses_events_with_and_without_pattern() -> None:
    for sent in (envelope(pattern="deposit.completed"), envelope()):
        event = parse_event(json.dumps(sent))
        assert isinstance(event.data, DepositCompleted)


def test_an_envelope_ignores_fields_added_later() -> None:
    parsed = EventEnvelope[dict[str, Any]].model_validate_json(
        json.dumps(envelope(pattern="deposit.completed", trace="t-1"))
    )
    assert parsed.pattern == "deposit.completed"
    assert not hasattr(parsed, "trace")


def test_a_pattern_other_than_the_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="is not the type"):
        EventEnvelope[dict[str, Any]].model_validate_json(
            json.dumps(envelope(pattern="payment.success"))
        )


# ---- the packet ----


def test_a_packet_is_pattern_and_data_and_perhaps_id() -> None:
    body = json.dumps({"pattern": "billing.wallet.balance", "data": {"user_id": "u"}, "id": "9f"})
    found = nestjs.packet_of(body.encode(), 1024)
    assert found == nestjs.Packet("billing.wallet.balance", "9f", b'{"user_id":"u"}')
    emitted = nestjs.packet_of(b'{"pattern":"order.created","data":{"order_id":"o"}}', 1024)
    assert emitted is not None
    assert emitted.id is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id": "u", "idempotency_key": "k"}',  # an ordinary command
        b'{"pattern": "x", "data": {}, "id": "1", "more": 1}',
        b'{"pattern": "x"}',
        b'{"data": {}, "id": "1"}',
        b'{"pattern": ["x"], "data": {}}',
        b'{"pattern": "x", "data": {}, "id": 1}',
        b'["pattern", "data"]',
        b'{"pattern": "x", "data": ',
    ],
)
def test_anything_else_is_no_packet(body: bytes) -> None:
    assert nestjs.packet_of(body, 1024) is None


def test_the_data_keeps_a_nul_escaped_so_the_parser_still_refuses_it() -> None:
    found = nestjs.packet_of(b'{"pattern": "x", "data": {"user_id": "a\\u0000b"}}', 1024)
    assert found is not None
    assert b"\\u0000" in found.data


def test_a_packet_too_large_to_read_is_still_a_packet() -> None:
    body = b'{"pattern":"billing.wallet.deposit","data":{"pad":"' + b"x" * 2048 + b'"}}'
    found = nestjs.packet_of(body, 1024)
    assert found == nestjs.Packet(None, None, body)
    assert nestjs.packet_of(b'{"pad":"' + b"x" * 2048 + b'"}', 1024) is None


def test_replies_in_nestjs_shape() -> None:
    assert nestjs.reply({"ok": True, "data": {"a": 1}}, "i") == {
        "id": "i", "response": {"a": 1}, "isDisposed": True,
    }  # fmt: skip
    error = {"code": "insufficient_funds", "message": "m", "details": {}}
    assert nestjs.reply({"ok": False, "error": error}, "i") == {
        "id": "i", "err": error, "isDisposed": True,
    }  # fmt: skip


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.queue)
def test_no_request_of_the_catalogue_can_be_mistaken_for_a_packet(entry: Any) -> None:
    """A packet's keys are pattern, data and id: no request has such a field, and every
    request refuses unknown fields, so a valid request is never a packet."""
    model = entry.request
    assert not set(model.model_fields) & nestjs.PACKET_KEYS, model
    assert model.model_config.get("extra") == "forbid", model


# ---- the README quotes the NestJS service the test runs ----


def readme_nestjs_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("<!-- nestjs:start -->") : readme.index("<!-- nestjs:end -->")]
    return re.findall(r"```ts\n(.*?)```", section, flags=re.DOTALL)


def test_every_typescript_snippet_of_the_readme_is_in_the_tested_service() -> None:
    sources = "\n".join(path.read_text() for path in sorted(NESTJS_SRC.glob("*.ts")))
    blocks = readme_nestjs_blocks()
    assert len(blocks) >= 8
    for block in blocks:
        assert block in sources, f"README block not in tests/nestjs/src:\n{block}"


def test_the_readme_shows_the_module_configuration_verbatim() -> None:
    module = (NESTJS_SRC / "billing.module.ts").read_text()
    assert module in readme_nestjs_blocks()
    for option in ("exchange: 'billing.commands'", "wildcards: true", "persistent: true",
                   "noAssert: true"):  # fmt: skip
        assert option in module
