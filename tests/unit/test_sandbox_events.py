"""What the sandbox's callback parser refuses: ids no inbox or payment row can hold.

Found by the hostile-input fuzz: a signed callback whose id had 256+ characters or a NUL
failed in the database (a CHECK on the inbox key, "invalid byte sequence 0x00") and was
retried before being dead-lettered, instead of being refused as invalid at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billing_worker.providers.sandbox import SandboxGateway


def body(**changes: Any) -> bytes:
    data = {"payment_id": "sbx_pi_1", "amount_minor": 150, "currency": "USD",
            **changes.pop("data", {})}  # fmt: skip
    return json.dumps({"id": "sbx_evt_1", "type": "payment.succeeded", "data": data,
                       **changes}).encode()  # fmt: skip


def test_a_well_formed_callback_is_read() -> None:
    event = SandboxGateway(b"k").parse_event(body())
    assert (event.event_id, event.provider_ref, event.amount_minor) == (
        "sbx_evt_1",
        "sbx_pi_1",
        150,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "e" * 256},
        {"id": ""},
        {"id": "evt\x00"},
        {"id": {"nested": "id"}},
        {"id": 17},
        {"data": {"payment_id": "p" * 256}},
        {"data": {"payment_id": "pi\x00"}},
        {"data": {"failure_message": "card\x00declined"}},
        {"data": {"currency": "US\x00"}},
    ],
)
def test_ids_and_texts_no_row_can_hold_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed sandbox event"):
        SandboxGateway(b"k").parse_event(body(**changes))
