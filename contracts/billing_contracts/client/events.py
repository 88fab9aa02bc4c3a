"""The events of `billing.events` as the client reads them: typed envelopes and the memory
of event ids an `EventStream` skips duplicates by."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from uuid import UUID

from billing_contracts.area_events import InvoiceEvent, SubscriptionEvent
from billing_contracts.catalog import EVENT_MODELS
from billing_contracts.envelope import EventEnvelope
from billing_contracts.events import (
    BalanceLow,
    DepositCompleted,
    PaymentFailed,
    PaymentSucceeded,
    WithdrawalCompleted,
)

EventData = (
    DepositCompleted
    | WithdrawalCompleted
    | PaymentSucceeded
    | PaymentFailed
    | BalanceLow
    | SubscriptionEvent
    | InvoiceEvent
    | dict[str, Any]
)
"""An event's `data`: the typed model of its type, or a dict for a type without one."""

Event = EventEnvelope[EventData]


def parse_event(body: bytes | str) -> Event:
    """An event envelope with `data` as the model of its type (a dict for other types).

    Raises pydantic's `ValidationError` when the body is not an event envelope or its
    data does not fit the model of its type.
    """
    raw = EventEnvelope[dict[str, Any]].model_validate_json(body)
    model = EVENT_MODELS.get(raw.type)
    data: EventData = raw.data if model is None else model.model_validate(raw.data)  # type: ignore[assignment]
    return EventEnvelope[EventData].model_construct(
        event_id=raw.event_id,
        type=raw.type,
        occurred_at=raw.occurred_at,
        version=raw.version,
        data=data,
    )


class Seen:
    """A bounded set of event ids, least recently seen evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[UUID, None] = OrderedDict()

    def __contains__(self, event_id: UUID) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        return False

    def add(self, event_id: UUID) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)
