"""A command's transaction, once per idempotency key: alone (`run_once`) or in a
coalesced batch of its kind (`run_batch`). `BillingService` opens the unit each runs in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from billing_contracts.envelope import Command
from billing_worker.db import retention
from billing_worker.db.intents import Intent
from billing_worker.db.uow import UnitOfWork
from billing_worker.domain.errors import BillingError, IdempotencyConflict
from billing_worker.domain.ledger import derived_id
from billing_worker.handlers.deps import Deps
from billing_worker.replies import (
    Reply,
    command_scope,
    conflict,
    ok,
    refusal_reply,
    replay,
    request_hash,
)
from billing_worker.units import Record, Refused, Unit

C = TypeVar("C", bound=BaseModel)
# A handler answers, or begins a provider call (an Intent) that the service finishes.
Handler = Callable[[C, UnitOfWork, Deps], Awaitable[BaseModel | Intent]]
# Many commands of one kind in one transaction -> each one's result or refusal, in order.
BatchHandler = Callable[
    [list[Any], UnitOfWork, Deps], Awaitable[Sequence[BaseModel | BillingError]]
]


async def run_once(
    unit: Unit,
    queue_scope: str,
    command: Command,
    digest: str,
    handler: Handler[Any],
    deps: Deps,
    look_back: bool,
) -> Reply | Intent:
    """The command's first transaction: the reply stored for its key; else the intent an
    earlier delivery began (to settle again); else the handler's reply, recorded with its
    outbox rows, or its intent, committed without a reply (phase one). A refusal raises
    `Refused` (recorded by the unit)."""
    key, scope, uow = command.idempotency_key, command_scope(queue_scope, command), unit.uow
    earlier = await _earlier(uow, queue_scope, scope, command, digest, look_back)
    if isinstance(earlier, Intent):  # an earlier delivery began it: continue it
        if earlier.request_hash != digest:
            return conflict(key)
        unit.announce()
        return earlier
    if earlier is not None:
        return earlier
    try:
        result = await handler(command, uow, deps)
    except BillingError as refusal:
        raise Refused(scope, key, digest, refusal) from refusal
    if isinstance(result, Intent):  # phase one: commit the intent
        intent = dataclasses.replace(result, scope=scope, idempotency_key=key, request_hash=digest)
        await uow.intents.insert(intent)
        await unit.flush()
        return intent
    reply = ok(result)
    await unit.flush_with_record(scope, key, digest, reply)
    return reply


async def _earlier(
    uow: UnitOfWork, queue_scope: str, scope: str, command: Command, digest: str, look_back: bool
) -> Reply | Intent | None:
    """What an earlier delivery left: the reply to replay, or its intent; None if nothing.

    `look_back` (a provider-first command, or a collision on a row whose id derives from
    the key): a command that ran before its record expired is refused, not run again."""
    key = command.idempotency_key
    stored = await uow.idempotency.find_command(scope, queue_scope, key, digest)
    if stored is not None:
        return replay(stored.request_hash, stored.reply, digest, key)
    pending = await uow.intents.of_command(scope, key)
    if pending is None and look_back and (done := await ran_before(queue_scope, command, uow)):
        # The row's lock was waited for: a concurrent copy that was finishing it has
        # committed its record or intent by now.
        stored = await uow.idempotency.find_command(scope, queue_scope, key, digest)
        if stored is not None:
            return replay(stored.request_hash, stored.reply, digest, key)
        pending = await uow.intents.of_command(scope, key)
        if pending is None:
            raise Refused(scope, key, digest, done)
    return pending


async def ran_before(
    queue_scope: str, command: Command, uow: UnitOfWork
) -> IdempotencyConflict | None:
    """The refusal of a command that ran before its idempotency record was deleted
    (retention): the row its first run created, with an id derived from the key, is
    there. It is not run again, so it can never move money twice."""
    derived = retention.DERIVED.get(queue_scope)
    user_id = getattr(command, "user_id", None)
    if derived is None or user_id is None:
        return None
    row_id = derived_id(derived.id_scope, str(user_id), command.idempotency_key)
    if not await retention.exists(uow.connection, derived.table, row_id):
        return None
    return IdempotencyConflict(
        "this idempotency key was already used by a command that ran before its reply "
        "expired; it is not run again (send a new key for a new command)",
        idempotency_key=command.idempotency_key,
        expired=True,
        **{derived.detail: str(row_id)},
    )


async def run_batch(
    unit: Unit,
    queue_scope: str,
    commands: Sequence[Command],
    batch_handler: BatchHandler,
    deps: Deps,
) -> list[Reply]:
    """Several commands of one kind in the unit's one transaction, each with its own
    idempotency record and reply: stored replies are replayed, the rest go to
    `batch_handler` together, and a duplicate within the batch gets its first's reply."""
    digests = [request_hash(command) for command in commands]
    # (scope, key) of each command: equal keys of two users are two different commands
    keys = [(command_scope(queue_scope, c), c.idempotency_key) for c in commands]
    replies: list[Reply | None] = [None] * len(commands)
    first: dict[tuple[str, str], int] = {}  # (scope, key) -> its first index in the batch
    wanted = sorted({(s, queue_scope, k, d) for (s, k), d in zip(keys, digests, strict=True)})
    stored = await unit.uow.idempotency.find_many(wanted)
    fresh: list[int] = []
    for i, scoped in enumerate(keys):
        if scoped in stored:
            replies[i] = replay(stored[scoped].request_hash, stored[scoped].reply, digests[i],
                                scoped[1])  # fmt: skip
        elif scoped not in first:
            first[scoped] = i
            fresh.append(i)
    outcomes = await batch_handler([commands[i] for i in fresh], unit.uow, deps)
    records: list[Record] = []
    for i, outcome in zip(fresh, outcomes, strict=True):
        reply = refusal_reply(outcome) if isinstance(outcome, BillingError) else ok(outcome)
        replies[i] = reply
        records.append((*keys[i], digests[i], reply))
    await unit.flush_with_records(records)
    return [
        replay(digests[first[keys[i]]], replies[first[keys[i]]], digests[i], keys[i][1])
        if reply is None  # a duplicate in the batch: its first's answer
        else reply
        for i, reply in enumerate(replies)
    ]
