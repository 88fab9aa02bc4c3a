"""The committed contract documents are what the code generates, and their examples hold."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from billing_contracts.catalog import ENTRIES, EVENT_EXAMPLES, EVENT_MODELS
from billing_contracts.envelope import EventEnvelope
from billing_contracts.money import MoneyFormatError, parse_minor
from billing_worker import contract_docs


def test_the_committed_asyncapi_document_catalogue_and_readme_index_are_up_to_date() -> None:
    stale = contract_docs.stale()
    assert stale == [], f"regenerate with `billing-worker docs`: {stale}"


def test_every_queue_and_event_has_a_channel_with_its_schema_and_an_example() -> None:
    document = json.loads(contract_docs.ASYNCAPI_PATH.read_text())
    messages = document["components"]["messages"]
    for entry in ENTRIES:
        assert entry.queue in document["channels"]
        [request] = [m for k, m in messages.items() if k.startswith(entry.queue + ":")]
        assert request["payload"]["$ref"].endswith(entry.request.__name__)
        assert request["examples"][0]["payload"] == dict(entry.example)
        if entry.reply is not None:
            assert f"{entry.queue}.reply" in document["channels"]
    for event_type in EVENT_MODELS:
        [event] = [m for k, m in messages.items() if k.startswith(event_type + ":")]
        assert event["examples"]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.queue)
def test_each_catalogue_example_is_a_valid_message(entry: object) -> None:
    entry.request.model_validate(dict(entry.example))  # type: ignore[attr-defined]


@pytest.mark.parametrize("event_type", list(EVENT_MODELS))
def test_each_event_example_is_valid_event_data(event_type: str) -> None:
    data = EVENT_MODELS[event_type].model_validate(dict(EVENT_EXAMPLES[event_type]))
    EventEnvelope[EVENT_MODELS[event_type]].model_validate(  # type: ignore[index]
        {"event_id": "0f8e2b4c-9d1a-4f6e-8b3c-2a7d5e9f1c04", "type": event_type,
         "occurred_at": "2026-11-25T09:30:00Z", "version": 1, "data": data.model_dump()}
    )  # fmt: skip


# -- what code generators get -------------------------------------------------------------


def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(contract_docs.ASYNCAPI_PATH.read_text())
    return document


def _schemas_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema object under `node` that a generator turns into a type of its own:
    objects, enums and unions."""
    if isinstance(node, dict):
        if node.get("type") == "object" or "enum" in node or "oneOf" in node:
            yield node
        for value in node.values():
            yield from _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_in(value)


def test_every_schema_has_an_explicit_title_usable_as_a_type_name() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    assert {key: schema.get("title") for key, schema in schemas.items()} == {
        key: key for key in schemas
    }
    named = list(_schemas_in(document["components"]))
    assert len(named) >= len(schemas)
    for schema in named:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", schema.get("title", "")), schema
    for message in document["components"]["messages"].values():
        assert set(message["payload"]) == {"$ref"}, message  # a named schema, never inline


def test_every_reply_is_one_of_its_success_and_the_error_told_apart_by_a_required_ok() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    replies = [entry for entry in ENTRIES if entry.reply is not None]
    for entry in replies:
        name = entry.request.__name__
        message = document["components"]["messages"][f"{entry.queue}.reply"]
        assert message["payload"] == {"$ref": f"#/components/schemas/{name}Reply"}
        assert schemas[f"{name}Reply"]["oneOf"] == [
            {"$ref": f"#/components/schemas/{name}OkReply"},
            {"$ref": "#/components/schemas/ErrorReply"},
        ]
        ok = schemas[f"{name}OkReply"]
        assert ok["properties"]["ok"]["const"] is True
        assert ok["required"] == ["ok", "data"]
    error = schemas["ErrorReply"]
    assert error["properties"]["ok"]["const"] is False
    assert error["required"] == ["ok", "error"]
    envelopes = [schema for key, schema in schemas.items() if key.endswith("Envelope")]
    assert len(envelopes) == len(set(EVENT_MODELS.values()))
    for envelope in envelopes:
        assert {"event_id", "type", "data"} <= set(envelope["required"]), envelope


def test_every_reply_the_worker_sends_satisfies_the_required_ok() -> None:
    """Requiring `ok` describes what is already on the wire: pydantic always dumps it."""
    from billing_contracts.envelope import ErrorBody, ErrorCode, ErrorReply, OkReply

    assert OkReply[dict[str, Any]](data={}).model_dump(mode="json")["ok"] is True
    error = ErrorBody(code=ErrorCode.NOT_FOUND, message="no such invoice")
    assert ErrorReply(error=error).model_dump(mode="json")["ok"] is False


@pytest.mark.parametrize(
    "amount",
    ["0", "7", "12.50", "0.125", "1.2345", "9223372036854775807", "", "01", "1.", ".5", "-1",
     "+1", "1e3", "1.23456", " 1", "1 ", "1\n", "1_000", "12345678901234567890", "١٢"],
)  # fmt: skip
def test_the_published_amount_pattern_is_the_shape_the_parser_accepts(amount: str) -> None:
    money = _document()["components"]["schemas"]["Money"]["properties"]
    shape = re.compile(money["amount"]["pattern"].replace("$", r"\Z"))  # ECMA `$` = end
    try:
        parse_minor(amount, "KWD")  # exponent 3: the fraction rule aside, the shape alone
        parsed = True
    except MoneyFormatError as refused:
        parsed = "fraction digits" in str(refused) or "too large" in str(refused)
    assert bool(shape.search(amount)) == parsed, amount
    assert money["currency"]["pattern"] == "^[A-Z]{3}$"


def test_every_operation_is_tagged_with_its_area() -> None:
    document = _document()
    assert [tag["name"] for tag in document["info"]["tags"]] == list(contract_docs.AREAS)
    by_area: dict[str, list[str]] = {}
    for name, operation in document["operations"].items():
        [tag] = operation.get("tags", [{"name": None}])
        assert tag["name"] in contract_docs.AREAS, f"{name} has no area: add it to AREA_PREFIXES"
        by_area.setdefault(tag["name"], []).append(name)
    assert set(by_area) == set(contract_docs.AREAS)
    assert "billing.wallet.withdraw" in by_area["wallet"]
    assert "billing.plan.upsert" in by_area["plans"]
    assert "billing.subscription.create" in by_area["subscriptions"]
    assert "billing.invoice.pay" in by_area["invoices"]
    assert "deposit.completed" in by_area["events"]
