"""The contract as documents: the AsyncAPI 3.0 file and the Markdown message catalogue.

Both are generated from the running app's subscribers and publishers (FastStream's
generator) and the contracts' catalogue, committed under `contracts/`, and checked for
staleness by the test suite: `billing-worker docs --check`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from faststream.specification import AsyncAPI
from pydantic import BaseModel, TypeAdapter

from billing_contracts import names
from billing_contracts.catalog import (
    BY_QUEUE,
    ENTRIES,
    EVENT_EXAMPLES,
    EVENT_MODELS,
    EVENT_PURPOSES,
)
from billing_contracts.envelope import ErrorReply, OkReply

ROOT = Path(__file__).resolve().parents[1]
ASYNCAPI_PATH = ROOT / "contracts" / "asyncapi.json"
CATALOGUE_PATH = ROOT / "contracts" / "CATALOGUE.md"
README_PATH = ROOT / "README.md"
INDEX_START, INDEX_END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"
DOC_BROKER_URL = "amqp://rabbitmq:5672/"
DESCRIPTION = (
    "Message-driven billing over RabbitMQ. Commands and queries go to their queue on the "
    "default exchange (routing key = queue name); set `reply_to` and `correlation_id` for a "
    "reply. Money is a decimal string plus an ISO 4217 code. Events go to the `billing.events` "
    "topic exchange with routing key = event type, at least once: dedupe on `event_id`."
)


# Every operation is tagged with the area of its channel; the worker's publishers (the
# events on `billing.events`) are `events`.
AREAS: dict[str, str] = {
    "wallet": "Deposits, withdrawals, balances, transactions, and the payment providers' "
    "callbacks that complete deposits",
    "plans": "The catalogue of subscription plans",
    "subscriptions": "Subscriptions to plans: create, cancel, look up",
    "invoices": "Invoices, paid from the balance, their tax rates and coupons, and the Orders "
    "service's orders",
    "payments": "Refunds of completed payments, to where they came from or to the balance",
    "payment-methods": "Saved payment methods: set up, list, detach, the default",
    "events": "What the worker publishes on the `billing.events` topic exchange",
}
AREA_PREFIXES: tuple[tuple[str, str], ...] = (
    ("billing.wallet.", "wallet"),
    (names.PROVIDER_EVENTS_QUEUE, "wallet"),
    ("billing.plan.", "plans"),
    ("billing.subscription.", "subscriptions"),
    ("billing.invoice.", "invoices"),
    ("billing.orders.", "invoices"),
    ("billing.tax-rate.", "invoices"),
    ("billing.coupon.", "invoices"),
    ("billing.payment.", "payments"),
    ("billing.payment-method.", "payment-methods"),
)
SCHEMA_REF = "#/components/schemas/"


def asyncapi_document() -> dict[str, Any]:
    from billing_worker.app import build_worker
    from billing_worker.settings import Settings

    settings = Settings(_env_file=None, rabbitmq_url=DOC_BROKER_URL)
    worker = build_worker(settings)  # builds subscribers and publishers; connects nothing
    spec = AsyncAPI(
        worker.broker, title="billing-worker", version=_version(), description=DESCRIPTION
    ).to_specification()
    document: dict[str, Any] = spec.to_jsonable()
    _add_replies(document)
    _add_examples(document)
    _name_envelopes(document)
    _tag_operations(document)
    return _stable(document)


def _stable(document: dict[str, Any]) -> dict[str, Any]:
    """Sorted sections: FastStream keeps subscribers in a set, so its order varies."""
    for section in ("channels", "operations"):
        document[section] = dict(sorted(document[section].items()))
    components = document.get("components", {})
    for section in list(components):
        components[section] = dict(sorted(components[section].items()))
    return document


def _reply_schemas(request: type[BaseModel], reply: Any, schemas: dict[str, Any]) -> str:
    """`<Request>Reply`: one of `<Request>OkReply` and `ErrorReply`, told apart by `ok`.

    Pydantic names a generic model `OkReply[WithdrawResult]` and leaves `ok` out of
    `required` because it has a default; a code generator then makes `ok` optional and
    cannot tell the two replies apart. Every reply the worker sends carries `ok`, so the
    published schema requires it (what a reply may contain is unchanged).
    """
    base = request.__name__
    ok_name, reply_name = f"{base}OkReply", f"{base}Reply"
    adapter: TypeAdapter[Any] = TypeAdapter(OkReply[reply])
    ok = adapter.json_schema(ref_template=SCHEMA_REF + "{model}")
    schemas.update(ok.pop("$defs", {}))
    error = ErrorReply.model_json_schema(ref_template=SCHEMA_REF + "{model}")
    schemas.update(error.pop("$defs", {}))
    data = ok["properties"]["data"]
    if "anyOf" in data:  # a union of results: name it, or generators call it `Data`
        data["title"] = f"{base}Data"
    ok["title"] = ok_name
    ok["description"] = f"A successful reply to `{base}`: `data` is the result."
    for schema in (ok, error):
        schema["required"] = ["ok", *(name for name in schema["required"] if name != "ok")]
    schemas[ok_name], schemas["ErrorReply"] = ok, error
    schemas[reply_name] = {
        "title": reply_name,
        "description": f"The reply to `{base}`: `ok` is true with `data`, or false with `error`.",
        "oneOf": [{"$ref": SCHEMA_REF + ok_name}, {"$ref": SCHEMA_REF + "ErrorReply"}],
    }
    return reply_name


def _add_replies(document: dict[str, Any]) -> None:
    """AsyncAPI 3 request/reply: each RPC operation replies on the caller's reply_to."""
    components = document.setdefault("components", {})
    schemas, messages = components.setdefault("schemas", {}), components.setdefault("messages", {})
    for name, operation in document["operations"].items():
        channel_name = operation["channel"]["$ref"].rsplit("/", 1)[1]
        entry = BY_QUEUE.get(channel_name)
        if entry is None or entry.reply is None or operation["action"] != "receive":
            continue
        reply_channel = f"{channel_name}.reply"
        messages[reply_channel] = {
            "name": f"{channel_name} reply",
            "title": f"Reply to {channel_name}",
            "contentType": "application/json",
            "correlationId": {"location": "$message.header#/correlation_id"},
            "payload": {"$ref": SCHEMA_REF + _reply_schemas(entry.request, entry.reply, schemas)},
        }
        document["channels"][reply_channel] = {
            "address": None,
            "description": f"The caller's reply_to queue for {channel_name}",
            "messages": {"Reply": {"$ref": f"#/components/messages/{reply_channel}"}},
        }
        operation["reply"] = {
            "address": {"location": "$message.header#/reply_to"},
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": [{"$ref": f"#/channels/{reply_channel}/messages/Reply"}],
        }
        document["operations"][name] = operation


def _name_envelopes(document: dict[str, Any]) -> None:
    """`EventEnvelope[DepositCompleted]` -> `DepositCompletedEnvelope`, a name a code
    generator can use as is (it would make `EventEnvelopeSquareleftDepositCompleted...`)."""
    schemas = document["components"]["schemas"]
    renamed: dict[str, str] = {}
    for key in list(schemas):
        if key.startswith("EventEnvelope[") and key.endswith("]"):
            data = key.removeprefix("EventEnvelope[").removesuffix("]")
            new = f"{data}Envelope"
            schemas[new] = {**schemas.pop(key), "title": new}
            schemas[new]["description"] = (
                f"An event on `billing.events` whose `data` is a `{data}`; AMQP "
                "`message_id` = `event_id`, routing key = `type`."
            )
            renamed[SCHEMA_REF + quote(key)] = SCHEMA_REF + new
            renamed[SCHEMA_REF + key] = SCHEMA_REF + new
    _replace_refs(document, renamed)


def _replace_refs(node: Any, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renamed:
            node["$ref"] = renamed[ref]
        for value in node.values():
            _replace_refs(value, renamed)
    elif isinstance(node, list):
        for value in node:
            _replace_refs(value, renamed)


def area_of(operation: dict[str, Any]) -> str | None:
    """The area an operation belongs to: `events` for what the worker publishes, else by
    the prefix of its channel (None: a channel no prefix names)."""
    if operation["action"] == "send":
        return "events"
    channel = operation["channel"]["$ref"].rsplit("/", 1)[1]
    return next((area for prefix, area in AREA_PREFIXES if channel.startswith(prefix)), None)


def _tag_operations(document: dict[str, Any]) -> None:
    document["info"]["tags"] = [{"name": n, "description": d} for n, d in AREAS.items()]
    for operation in document["operations"].values():
        area = area_of(operation)
        if area is not None:
            operation["tags"] = [{"name": area}]


def _add_examples(document: dict[str, Any]) -> None:
    for key, message in document.get("components", {}).get("messages", {}).items():
        channel = key.split(":", 1)[0]
        entry = BY_QUEUE.get(channel)
        if entry is not None and ":" in key:  # a query without fields: {} is its example
            message["examples"] = [{"name": "example", "payload": dict(entry.example)}]
        elif channel in EVENT_EXAMPLES and ":" in key:
            envelope = {"event_id": "0f8e2b4c-9d1a-4f6e-8b3c-2a7d5e9f1c04", "type": channel,
                        "occurred_at": "2026-11-25T09:30:00Z", "version": 1,
                        "data": dict(EVENT_EXAMPLES[channel])}  # fmt: skip
            message["examples"] = [{"name": "example", "payload": envelope}]


def _version() -> str:
    from importlib.metadata import version

    return version("billing-worker")


def _field_rows(model: Any) -> list[str]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or prop.get("$ref", "").rsplit("/", 1)[-1]
        if not kind and "anyOf" in prop:
            kind = " or ".join(
                p.get("type") or p.get("$ref", "?").rsplit("/", 1)[-1] for p in prop["anyOf"]
            )
        note = (prop.get("description") or "").replace("\n", " ").replace("|", "/")
        rows.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | {note} |")
    return rows


def catalogue_markdown() -> str:
    out = ["# Message catalogue", "",
           "Generated from `billing_contracts` by `billing-worker docs`; do not edit by hand.",
           "Conventions, money format and error envelope: see the README. Machine-readable: "
           "[`asyncapi.json`](asyncapi.json).", ""]  # fmt: skip
    for entry in ENTRIES:
        exchange = f"exchange `{names.ORDERS_EXCHANGE}`, key `{names.ORDER_CREATED}`" \
            if entry.kind == "event" else "default exchange, routing key = queue"  # fmt: skip
        reply = getattr(entry.reply, "__name__", None) or str(entry.reply).replace(
            "billing_contracts.", ""
        )
        out += [f"## `{entry.queue}`", "", f"*{entry.kind}* ({exchange}). {entry.purpose}.", "",
                "| field | type | required | description |", "| --- | --- | --- | --- |",
                *_field_rows(entry.request), ""]  # fmt: skip
        if entry.reply is not None:
            out.append(f"Reply `data`: `{reply}`.")
        if entry.errors:
            out.append("Errors: " + ", ".join(f"`{code.value}`" for code in entry.errors) + ".")
        out += ["", "```json", json.dumps(dict(entry.example), indent=2), "```", ""]
    out += ["## Events on `billing.events`", "", "| routing key | when | `data` model |",
            "| --- | --- | --- |"]  # fmt: skip
    for event_type, model in EVENT_MODELS.items():
        out.append(f"| `{event_type}` | {EVENT_PURPOSES[event_type]} | `{model.__name__}` |")
    return "\n".join(out) + "\n"


def readme_index() -> str:
    rows = ["| queue | kind | purpose | refusals |", "| --- | --- | --- | --- |"]
    for entry in ENTRIES:
        errors = ", ".join(f"`{code.value}`" for code in entry.errors) or "—"
        rows.append(f"| `{entry.queue}` | {entry.kind} | {entry.purpose} | {errors} |")
    return "\n".join([INDEX_START, *rows, INDEX_END])


def rendered() -> dict[Path, str]:
    """Every generated file with its expected content."""
    readme = README_PATH.read_text()
    start, end = readme.index(INDEX_START), readme.index(INDEX_END) + len(INDEX_END)
    return {
        ASYNCAPI_PATH: json.dumps(asyncapi_document(), indent=2, sort_keys=False) + "\n",
        CATALOGUE_PATH: catalogue_markdown(),
        README_PATH: readme[:start] + readme_index() + readme[end:],
    }


def stale() -> list[Path]:
    return [
        path for path, text in rendered().items() if not path.exists() or path.read_text() != text
    ]


def write() -> list[Path]:
    changed = stale()
    for path, text in rendered().items():
        if path in changed:
            path.write_text(text)
    return changed
