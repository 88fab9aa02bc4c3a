"""Runs handlers inside one database transaction each, with idempotency and the outbox.

A command's state change, its idempotency record (with the reply) and its outbox events
commit together or not at all. A refusal (`insufficient_funds`, ...) rolls the changes
back but is itself recorded, so the same key always gets the same answer.

A command that calls a payment provider runs in two phases (see
`billing_worker.handlers.flows`): its handler returns an `Intent`, committed without a
reply; the provider is called holding no database connection; the answer, the
idempotency record with the (final) reply and the outbox rows commit together in a
second transaction. A redelivery finds the intent and calls the provider again with
the same idempotency key, which the provider dedupes; the reconciler finishes intents a
crash left behind. No connection waits on a provider, however slow.

Records are scoped by queue and by the user the command acts for (`user_scope`): one
user's key is never another's conflict. A record written before that scoping (the
queue's scope alone) is still replayed to the very command it answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_contracts.envelope import Command, ErrorCode
from billing_worker.db import retention
from billing_worker.db.engine import driver_connection
from billing_worker.db.idempotency import user_scope
from billing_worker.db.intents import Intent
from billing_worker.db.uow import Clock, UnitOfWork, utc_now
from billing_worker.domain.errors import BillingError, IdempotencyConflict, TransientError
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import stripe_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.flows import FLOWS
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from billing_worker.handlers.wallet import derived_id

log = logging.getLogger(__name__)

Reply = dict[str, Any]
C = TypeVar("C", bound=BaseModel)
R = TypeVar("R")
M = TypeVar("M")
# A handler answers, or begins a provider call (an Intent) that the service finishes.
Handler = Callable[[C, UnitOfWork, Deps], Awaitable[BaseModel | Intent]]
# Many commands of one kind in one transaction -> each one's result or refusal, in order.
BatchHandler = Callable[
    [list[Any], UnitOfWork, Deps], Awaitable[Sequence[BaseModel | BillingError]]
]

_RETRIES = 5  # concurrent duplicates, deadlocks, serialization failures


def ok(data: BaseModel) -> Reply:
    return {"ok": True, "data": data.model_dump(mode="json")}


def error(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> Reply:
    return {
        "ok": False,
        "error": {"code": code.value, "message": message, "details": details or {}},
    }


def request_hash(command: Command) -> str:
    body = command.model_dump_json(exclude={"idempotency_key"})
    return hashlib.sha256(body.encode()).hexdigest()


def command_scope(queue_scope: str, command: Command) -> str:
    """Where the command's idempotency record lives: its queue and its user, if any."""
    user_id = getattr(command, "user_id", None)
    return user_scope(queue_scope, None if user_id is None else str(user_id))


class _Refused(Exception):
    def __init__(self, refusal: BillingError) -> None:
        self.refusal = refusal


def _is_retryable(exc: asyncpg.PostgresError) -> bool:
    """A concurrent duplicate of the same command collides on a unique key — the
    idempotency record, or a row whose id derives from the key (a transaction, a
    subscription) — only once the other copy committed: the next attempt finds its
    stored reply. Deadlocks and serialization failures are worth another go too."""
    return isinstance(
        exc,
        asyncpg.UniqueViolationError | asyncpg.SerializationError | asyncpg.DeadlockDetectedError,
    )


class BillingService:
    """The application layer between messaging and handlers."""

    def __init__(
        self,
        engine: AsyncEngine,
        deps: Deps,
        clock: Clock = utc_now,
        on_commit: Callable[[UnitOfWork, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.deps = deps
        self.clock = clock
        # told about every committed unit of work and its outbox row count
        self._on_commit = on_commit or (lambda _uow, _rows: None)

    async def command(self, scope: str, command: C, handler: Handler[C]) -> Reply:
        """Run a command once per idempotency key and return its (first) reply."""
        assert isinstance(command, Command)
        digest = request_hash(command)
        look_back = scope in retention.PROVIDER_FIRST
        for _ in range(_RETRIES):
            try:
                return await self._command_once(scope, command, digest, handler, look_back)
            except asyncpg.PostgresError as exc:
                if not _is_retryable(exc):
                    raise
                # A collision on a row whose id derives from the key: the next attempt
                # finds the other copy's record, or else the record expired.
                look_back = look_back or (
                    getattr(exc, "constraint_name", None) in retention.DERIVED_KEYS
                )
                log.debug("retrying %s %s after %s", scope, command.idempotency_key, exc)
        raise RuntimeError(f"{scope}: gave up after {_RETRIES} conflicting attempts")

    async def _command_once(
        self,
        queue_scope: str,
        command: Command,
        digest: str,
        handler: Handler[Any],
        look_back: bool = False,
    ) -> Reply:
        key = command.idempotency_key
        scope = command_scope(queue_scope, command)
        pending: Intent | None = None
        async with driver_connection(self.engine) as db:
            uow = UnitOfWork(db, self.clock)
            try:
                async with db.transaction():
                    stored = await uow.idempotency.find_command(scope, queue_scope, key, digest)
                    if stored is not None:
                        return _replay(stored.request_hash, stored.reply, digest, key)
                    pending = await uow.intents.of_command(scope, key)
                    if (
                        pending is None
                        and look_back
                        and (done := await ran_before(queue_scope, command, uow))
                    ):
                        # The row's lock was waited for: a concurrent copy that was
                        # finishing it has committed its record or intent by now.
                        stored = await uow.idempotency.find_command(scope, queue_scope, key, digest)
                        if stored is not None:
                            return _replay(stored.request_hash, stored.reply, digest, key)
                        pending = await uow.intents.of_command(scope, key)
                        if pending is None:
                            raise _Refused(done)
                    if pending is not None:  # an earlier delivery began it: continue it
                        if pending.request_hash != digest:
                            return _conflict(key)
                        events = 0
                    else:
                        try:
                            result = await handler(command, uow, self.deps)
                        except BillingError as refusal:
                            raise _Refused(refusal) from refusal
                        if isinstance(result, Intent):  # phase one: commit the intent
                            pending = dataclasses.replace(
                                result, scope=scope, idempotency_key=key, request_hash=digest
                            )
                            await uow.intents.insert(pending)
                            events = await uow.flush()
                        else:
                            reply = ok(result)
                            events = await uow.flush_with_record(scope, key, digest, reply)
            except _Refused as refused:
                reply = error(
                    refused.refusal.code, refused.refusal.message, refused.refusal.details
                )
                async with db.transaction():
                    await uow.idempotency.record(scope, key, digest, reply)
                return reply
        self._on_commit(uow, events)
        if pending is not None:  # the connection is back in the pool before the call
            answer = await self.settle(pending)
            assert answer is not None, "a command's intent always ends with a reply"
            return answer
        return reply

    async def settle(self, intent: Intent) -> Reply | None:
        """Phases two and three of an intent: call the provider (no connection held),
        then record its answer, the command's reply and the outbox rows in one
        transaction. Whoever settles an intent first wins; the others get its stored
        reply (None for the scheduler's own intents, which answer nobody).

        A provider outage (`TransientError`) leaves the intent as it was: the command is
        redelivered, or the reconciler tries again later.
        """
        flow = FLOWS[intent.kind]
        if intent.provider not in self.deps.gateways:  # not a refusal: ask where it is set up
            raise TransientError(f"{intent.provider} is not configured on this worker")
        outcome: Any
        try:
            outcome = await flow.call(intent, self.deps)
        except BillingError as refusal:  # refused outright: nothing exists at the provider
            outcome = refusal
        async with driver_connection(self.engine) as db:
            uow = UnitOfWork(db, self.clock)
            async with db.transaction():
                if not await uow.intents.take(intent.id):
                    return await self._settled_reply(uow, intent)
                if isinstance(outcome, BillingError):
                    await flow.undo(intent, uow)
                    reply = error(outcome.code, outcome.message, outcome.details)
                else:
                    answer = await flow.finish(intent, outcome, uow, self.deps)
                    reply = ok(answer) if answer is not None else {"ok": True, "data": None}
                if intent.scope is not None and intent.idempotency_key is not None:
                    events = await uow.flush_with_record(
                        intent.scope, intent.idempotency_key, intent.request_hash or "", reply
                    )
                else:
                    events = await uow.flush()
        self._on_commit(uow, events)
        return reply

    async def _settled_reply(self, uow: UnitOfWork, intent: Intent) -> Reply | None:
        """The reply stored by whoever settled the intent before us."""
        if intent.scope is None or intent.idempotency_key is None:
            return None
        stored = await uow.idempotency.find(intent.scope, intent.idempotency_key)
        if stored is None or stored.reply is None:  # settled by a transaction not yet visible
            raise TransientError(f"intent {intent.id} is being settled elsewhere")
        return stored.reply

    async def command_batch(
        self,
        scope: str,
        commands: Sequence[Command],
        handler: Handler[Any],
        batch_handler: BatchHandler,
    ) -> list[Reply | Exception]:
        """Run several commands of one kind in ONE database transaction (coalescing).

        Each keeps its own outcome: its own idempotency record and reply, its own refusal.
        `batch_handler` returns refusals instead of raising them, and a refused command
        must leave nothing behind in the shared transaction. If the batch fails as a whole — a
        concurrent duplicate, a deadlock, anything unexpected — every command is run
        again on its own, so one bad command cannot fail the others.
        """
        try:
            return await self._batch_once(scope, commands, batch_handler)
        except Exception as error:
            log.debug("batch of %d %s fell back to one by one: %s", len(commands), scope, error)
            results: list[Reply | Exception] = []
            for command in commands:
                try:
                    results.append(await self.command(scope, command, handler))
                except Exception as failure:  # its own failure, retried by the pipeline
                    results.append(failure)
            return results

    async def _batch_once(
        self, queue_scope: str, commands: Sequence[Command], batch_handler: BatchHandler
    ) -> list[Reply | Exception]:
        digests = [request_hash(command) for command in commands]
        # (scope, key) of each command: equal keys of two users are two different commands
        keys = [
            (command_scope(queue_scope, command), command.idempotency_key) for command in commands
        ]
        replies: list[Reply | None] = [None] * len(commands)
        first: dict[tuple[str, str], int] = {}  # (scope, key) -> its first index in the batch
        async with driver_connection(self.engine) as db:
            uow = UnitOfWork(db, self.clock, coalesced=True)
            async with db.transaction():
                wanted = sorted(
                    {(s, queue_scope, k, d) for (s, k), d in zip(keys, digests, strict=True)}
                )
                stored = await uow.idempotency.find_many(wanted)
                fresh: list[int] = []
                for i, scoped in enumerate(keys):
                    key = scoped[1]
                    if scoped in stored:
                        replies[i] = _replay(stored[scoped].request_hash, stored[scoped].reply,
                                             digests[i], key)  # fmt: skip
                    elif scoped not in first:
                        first[scoped] = i
                        fresh.append(i)
                outcomes = await batch_handler([commands[i] for i in fresh], uow, self.deps)
                records = []
                for i, outcome in zip(fresh, outcomes, strict=True):
                    replies[i] = (
                        error(outcome.code, outcome.message, outcome.details)
                        if isinstance(outcome, BillingError)
                        else ok(outcome)
                    )
                    records.append((*keys[i], digests[i], replies[i]))
                events = await uow.flush_with_records(records)  # type: ignore[arg-type]
        self._on_commit(uow, events)
        for i, scoped in enumerate(keys):  # duplicates in the batch get their first's answer
            if replies[i] is None:
                j = first[scoped]
                replies[i] = _replay(digests[j], replies[j], digests[i], scoped[1])
        return [reply for reply in replies if reply is not None]

    async def query(self, query: C, handler: Handler[C]) -> Reply:
        async with driver_connection(self.engine) as db:
            try:
                result = await handler(query, UnitOfWork(db, self.clock), self.deps)
                if isinstance(result, Intent):
                    raise TypeError("a query cannot begin a provider call")
                return ok(result)
            except BillingError as refusal:
                return error(refusal.code, refusal.message, refusal.details)

    async def apply(self, message: M, handler: Callable[[M, UnitOfWork, Deps], Awaitable[R]]) -> R:
        """Run a handler for an inbound event in one transaction with its outbox rows.

        No idempotency record: the handler's own unique keys make redelivery safe
        (e.g. one invoice per `order_id`).
        """
        async with driver_connection(self.engine) as db:
            uow = UnitOfWork(db, self.clock)
            async with db.transaction():
                result = await handler(message, uow, self.deps)
                events = await uow.flush()
        self._on_commit(uow, events)
        return result

    async def provider_event(self, claim: ProviderEvent) -> Applied:
        """Apply what a provider callback claims, as far as the provider's API confirms it.

        The provider is asked before any database transaction opens (a slow provider
        holds no connection). The event is claimed in its provider's inbox only once
        confirmed, so an id nobody verified can never block the genuine event.
        """
        inbox = f"provider:{claim.provider}"
        if await self._seen(inbox, claim.event_id):
            return Applied.DUPLICATE  # only confirmed events are ever claimed
        event = await self.deps.gateways.get(claim.provider).confirm(claim)
        if event is None:
            log.warning(
                "not trusting %s %s for %s: the provider does not confirm it",
                claim.provider, claim.event_type, claim.provider_ref or claim.subscription_ref,
            )  # fmt: skip
            return Applied.UNTRUSTED
        return await self.apply_confirmed(event, inbox)

    async def apply_confirmed(self, event: ProviderEvent, inbox: str) -> Applied:
        """Apply an event the provider itself confirmed, once per (inbox, event id).

        Webhooks and the reconciler use different inboxes: neither can claim an id in
        the other's.
        """
        subscription = None
        if event.subscription_ref is not None:  # re-read before any transaction opens
            subscription = await stripe_subscriptions.fetch(event, self.deps)
        async with driver_connection(self.engine) as db:
            uow = UnitOfWork(db, self.clock)
            async with db.transaction():
                outcome = await apply_provider_event(event, uow, self.deps, inbox, subscription)
                events = await uow.flush()
        self._on_commit(uow, events)
        return outcome

    async def _seen(self, scope: str, key: str) -> bool:
        async with driver_connection(self.engine) as db:
            return await UnitOfWork(db, self.clock).idempotency.find(scope, key) is not None


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


def _conflict(key: str) -> Reply:
    conflict = IdempotencyConflict(
        "this idempotency key was already used with a different payload", idempotency_key=key
    )
    return error(conflict.code, conflict.message, conflict.details)


def _replay(stored_hash: str, reply: Reply | None, digest: str, key: str) -> Reply:
    if stored_hash != digest:
        return _conflict(key)
    assert reply is not None, "command records always carry their reply"
    return reply
