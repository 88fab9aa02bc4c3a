"""Every message model survives a JSON round trip, for any valid money, ids and keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_contracts.catalog import ENTRIES, EVENT_EXAMPLES, EVENT_MODELS
from billing_contracts.money import CURRENCY_EXPONENTS, MAX_MINOR_UNITS, Money

moneys = st.builds(
    lambda currency, minor: Money.from_minor(minor, currency).model_dump(),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    st.integers(min_value=1, max_value=MAX_MINOR_UNITS),
)
texts = st.text(min_size=1, max_size=255)


def vary(value: Any, draw: Any) -> Any:
    """The example with every money, id and key replaced by a freshly drawn valid one."""
    if isinstance(value, dict):
        if set(value) == {"amount", "currency"}:
            return draw(moneys)
        return {
            key: draw(texts) if key in {"user_id", "idempotency_key"} else vary(item, draw)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [vary(item, draw) for item in value]
    return value


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.queue)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_command_or_query_round_trips_through_json(entry: Any, data: Any) -> None:
    payload = vary(dict(entry.example), data.draw)
    model = entry.request.model_validate(payload)
    wire = model.model_dump_json()
    assert entry.request.model_validate_json(wire) == model
    leaves = _leaves(json.loads(wire))
    assert not any(isinstance(v, float) for v in leaves)  # money never travels as a number


@pytest.mark.parametrize("event_type", list(EVENT_MODELS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_event_data_round_trips_through_json(event_type: str, data: Any) -> None:
    model_type = EVENT_MODELS[event_type]
    model = model_type.model_validate(vary(dict(EVENT_EXAMPLES[event_type]), data.draw))
    assert model_type.model_validate_json(model.model_dump_json()) == model


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
