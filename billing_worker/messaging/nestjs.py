"""NestJS's RabbitMQ transport (@nestjs/microservices `Transport.RMQ`) on the wire.

A NestJS `ClientProxy` does not send the command itself: `send(pattern, data)` publishes
the packet `{"pattern": ..., "data": <the command>, "id": "<hex>"}` (`emit` the same
without `id`), with `correlation_id` = `id`, `reply_to` = `amq.rabbitmq.reply-to` and no
`content_type`. It settles `send()` only on a reply `{"id", "response", "isDisposed"}` or
`{"id", "err", "isDisposed"}`; any other body resolves as a plain value, so an
`{"ok": false, ...}` envelope would look like a success.

So on a queue that accepts packets (`Route.patterns`), a body that is exactly such a
packet (keys `pattern` and `data`, perhaps `id`, nothing else) is unwrapped: `data` is
validated as the queue's command, and every reply to it — result, refusal, invalid
message, internal error, an idempotent replay — goes back in NestJS's shape. No
command, query or `order.created` body can have this shape (they are closed models
without `pattern` or `data` fields), so nothing changes for any other caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PACKET_KEYS = frozenset({"pattern", "data", "id"})
# How JSON.stringify writes a packet (`{pattern, data}` then `id`): the sign of one too
# large to parse.
PACKET_PREFIX = b'{"pattern":'


@dataclass(frozen=True, slots=True)
class Packet:
    pattern: str | None  # None: too large to read
    id: str | None  # None: an `emit` (an event), which expects no reply
    data: bytes  # the packet's `data` as JSON: what the queue's parser validates


def packet_of(body: bytes, max_bytes: int) -> Packet | None:
    """The NestJS packet `body` is, or None when it is an ordinary message.

    A body over `max_bytes` is not parsed: if it starts like a packet it is one whose
    data is the whole body, so the parser refuses its size in NestJS's shape."""
    if len(body) > max_bytes:
        return Packet(None, None, body) if body.startswith(PACKET_PREFIX) else None
    if b'"pattern"' not in body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not {"pattern", "data"} <= value.keys() <= PACKET_KEYS:
        return None
    pattern, packet_id = value["pattern"], value.get("id")
    if not isinstance(pattern, str) or not (packet_id is None or isinstance(packet_id, str)):
        return None
    # Control characters (NUL among them) stay escaped, so the parser still sees them.
    data = json.dumps(value["data"], ensure_ascii=False, separators=(",", ":"))
    return Packet(pattern, packet_id, data.encode())


def reply(envelope: Mapping[str, Any], packet_id: str | None) -> dict[str, Any]:
    """Our reply envelope in NestJS's shape: `response` on success, `err` otherwise (the
    error object `{code, message, details}`, what `send()` rejects with)."""
    if envelope.get("ok"):
        return {"id": packet_id, "response": envelope.get("data"), "isDisposed": True}
    return {"id": packet_id, "err": envelope.get("error"), "isDisposed": True}
