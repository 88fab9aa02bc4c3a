"""The committed contract documents are what the code generates, and their examples hold."""

from __future__ import annotations

import json

import pytest

from billing_contracts.catalog import ENTRIES, EVENT_EXAMPLES, EVENT_MODELS
from billing_contracts.envelope import EventEnvelope
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
