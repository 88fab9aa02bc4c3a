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

Every database call runs in one scaffold, `units.open_unit` (`_unit`); the command's
transaction itself is in `commands.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_contracts.envelope import Command
from billing_worker.commands import BatchHandler, Handler, run_batch, run_once
from billing_worker.db import retention
from billing_worker.db.intents import Intent
from billing_worker.db.uow import Clock, UnitOfWork, utc_now
from billing_worker.domain.errors import BillingError, TransientError, WriteConflict
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import stripe_subscriptions
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.flows import FLOWS
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from billing_worker.replies import Reply, ok, refusal_reply, request_hash
from billing_worker.units import OnCommit, Unit, open_unit

__all__ = ["BatchHandler", "BillingService", "Handler", "QueryBatchHandler", "Reply"]

# Many queries of one kind -> each one's result, in order (one round trip).
QueryBatchHandler = Callable[[list[Any], UnitOfWork, Deps], Awaitable[Sequence[BaseModel]]]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
R = TypeVar("R")
M = TypeVar("M")

_RETRIES = 5  # concurrent duplicates, deadlocks, serialization failures

# Set while a coalescer's flusher runs a batch (`BillingService.batch_lane`).
_IN_BATCH: ContextVar[bool] = ContextVar("in_batch", default=False)


class BillingService:
    """The application layer between messaging and handlers."""

    def __init__(
        self,
        engine: AsyncEngine,
        deps: Deps,
        clock: Clock = utc_now,
        on_commit: OnCommit | None = None,
        batch_engine: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        # A pool of its own for the coalescers' batches, one connection per coalescing
        # route (each runs one batch at a time): a batch of 32 withdrawals never queues
        # for a connection behind 100 single messages of other queues.
        self.batch_engine = batch_engine
        self.deps = deps
        self.clock = clock
        # told about every committed unit of work and its outbox row count
        self._on_commit = on_commit or (lambda _uow, _rows: None)

    def _unit(
        self, *, transaction: bool = True, coalesced: bool = False
    ) -> AbstractAsyncContextManager[Unit]:
        """The scaffold of every database call below (`units.open_unit`), on the batch
        lane's pool inside `batch_lane`."""
        engine = self.batch_engine if self.batch_engine and _IN_BATCH.get() else self.engine
        return open_unit(
            engine, self.clock, self._on_commit, transaction=transaction, coalesced=coalesced
        )

    @staticmethod
    @contextmanager
    def batch_lane() -> Iterator[None]:
        """The database work in the block (a coalescer's batch, its fallback one by one
        included: one connection at a time) runs on `batch_engine` when there is one."""
        token = _IN_BATCH.set(True)
        try:
            yield
        finally:
            _IN_BATCH.reset(token)

    async def command(self, scope: str, command: C, handler: Handler[C]) -> Reply:
        """Run a command once per idempotency key and return its (first) reply.

        A concurrent duplicate of the same command collides on a unique key — the
        idempotency record, or a row whose id derives from the key (a transaction, a
        subscription) — only once the other copy committed: the next attempt finds its
        stored reply. Deadlocks and serialization failures are worth another go too.
        """
        assert isinstance(command, Command)
        digest = request_hash(command)
        look_back = scope in retention.PROVIDER_FIRST
        for _ in range(_RETRIES):
            try:
                return await self._command_once(scope, command, digest, handler, look_back)
            except WriteConflict as exc:
                # A collision on a row whose id derives from the key: the next attempt
                # finds the other copy's record, or else the record expired.
                look_back = look_back or exc.constraint in retention.DERIVED_KEYS
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
        outcome: Reply | Intent | None = None  # stays None when the command is refused
        async with self._unit() as unit:
            outcome = await run_once(
                unit, queue_scope, command, digest, handler, self.deps, look_back
            )
        if outcome is None:  # the unit rolled back and recorded the refusal
            assert unit.refusal is not None
            return unit.refusal
        if isinstance(outcome, Intent):  # the connection is back in the pool before the call
            answer = await self.settle(outcome)
            assert answer is not None, "a command's intent always ends with a reply"
            return answer
        return outcome

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
        async with self._unit() as unit:
            uow = unit.uow
            if not await uow.intents.take(intent.id):
                return await self._settled_reply(uow, intent)
            if isinstance(outcome, BillingError):
                await flow.undo(intent, uow)
                reply = refusal_reply(outcome)
            else:
                answer = await flow.finish(intent, outcome, uow, self.deps)
                reply = ok(answer)
            if intent.scope is not None and intent.idempotency_key is not None:
                await unit.flush_with_record(
                    intent.scope, intent.idempotency_key, intent.request_hash or "", reply
                )
            else:
                await unit.flush()
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
        *,
        defer_inserts: bool = True,
    ) -> list[Reply | Exception]:
        """Run several commands of one kind in ONE database transaction (coalescing).

        Each keeps its own outcome: its own idempotency record and reply, its own refusal.
        `batch_handler` returns refusals instead of raising them, and a refused command
        must leave nothing behind in the shared transaction. If the batch fails as a whole — a
        concurrent duplicate, a deadlock, anything unexpected — every command is run
        again on its own, so one bad command cannot fail the others. `defer_inserts`: the
        batch's new transactions go in one statement at the flush (`UnitOfWork`).
        """
        try:
            async with self._unit(coalesced=defer_inserts) as unit:
                return list(await run_batch(unit, scope, commands, batch_handler, self.deps))
        except Exception as error:
            log.debug("batch of %d %s fell back to one by one: %s", len(commands), scope, error)
            results: list[Reply | Exception] = []
            for command in commands:
                try:
                    results.append(await self.command(scope, command, handler))
                except Exception as failure:  # its own failure, retried by the pipeline
                    results.append(failure)
            return results

    async def query_batch(
        self, queries: Sequence[BaseModel], batch_handler: QueryBatchHandler
    ) -> list[Reply | Exception]:
        """Several queries of one kind on one connection, answered in one round trip
        (coalescing); a failure is every query's, each retried by the pipeline."""
        async with self._unit(transaction=False) as unit:
            try:
                results = await batch_handler(list(queries), unit.uow, self.deps)
            except Exception as failure:
                return [failure for _ in queries]
        return [ok(result) for result in results]

    async def query(self, query: C, handler: Handler[C]) -> Reply:
        async with self._unit(transaction=False) as unit:
            try:
                result = await handler(query, unit.uow, self.deps)
                if isinstance(result, Intent):
                    raise TypeError("a query cannot begin a provider call")
                return ok(result)
            except BillingError as refusal:
                return refusal_reply(refusal)

    async def apply(self, message: M, handler: Callable[[M, UnitOfWork, Deps], Awaitable[R]]) -> R:
        """Run a handler for an inbound event in one transaction with its outbox rows.

        No idempotency record: the handler's own unique keys make redelivery safe
        (e.g. one invoice per `order_id`).
        """
        async with self._unit() as unit:
            result = await handler(message, unit.uow, self.deps)
            await unit.flush()
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
        async with self._unit() as unit:
            outcome = await apply_provider_event(event, unit.uow, self.deps, inbox, subscription)
            await unit.flush()
        return outcome

    async def provider_events(self, claims: Sequence[ProviderEvent]) -> list[Applied | Exception]:
        """Several callbacks at once (coalesced): each keeps its own outcome or failure.

        One lookup tells which event ids were applied before; the others are confirmed at
        their providers side by side, holding no connection; the confirmed ones are then
        applied in ONE transaction, each exactly as `apply_confirmed` would, with one
        statement for all their outbox rows. If that transaction fails as a whole (a
        payment not created yet, a deadlock, ...) each event is applied again on its own,
        so one callback cannot hold back or fail the others. A provider-run subscription's
        event is re-read from Stripe and applied on its own.
        """
        if len(claims) == 1:
            try:
                return [await self.provider_event(claims[0])]
            except Exception as failure:  # its own failure, retried by the pipeline
                return [failure]
        inboxes = [f"provider:{claim.provider}" for claim in claims]
        async with self._unit(transaction=False) as unit:
            seen = await unit.uow.idempotency.seen_many(
                [(inbox, claim.event_id) for inbox, claim in zip(inboxes, claims, strict=True)]
            )
        results: list[Applied | Exception | None] = [
            Applied.DUPLICATE if (inbox, claim.event_id) in seen else None
            for inbox, claim in zip(inboxes, claims, strict=True)
        ]
        fresh = [i for i, result in enumerate(results) if result is None]
        confirmed = await asyncio.gather(
            *(self.deps.gateways.get(claims[i].provider).confirm(claims[i]) for i in fresh),
            return_exceptions=True,
        )
        together: list[tuple[int, ProviderEvent]] = []
        for i, event in zip(fresh, confirmed, strict=True):
            if isinstance(event, BaseException):
                results[i] = event if isinstance(event, Exception) else RuntimeError(str(event))
            elif event is None:
                log.warning(
                    "not trusting %s %s for %s: the provider does not confirm it",
                    claims[i].provider, claims[i].event_type,
                    claims[i].provider_ref or claims[i].subscription_ref,
                )  # fmt: skip
                results[i] = Applied.UNTRUSTED
            elif event.subscription_ref is not None:
                results[i] = await self._applied_alone(event, inboxes[i])
            else:
                together.append((i, event))
        if together:
            for i, outcome in zip(
                (i for i, _ in together),
                await self._apply_together([(e, inboxes[i]) for i, e in together]),
                strict=True,
            ):
                results[i] = outcome
        return [result if result is not None else RuntimeError("not applied") for result in results]

    async def _apply_together(
        self, events: list[tuple[ProviderEvent, str]]
    ) -> list[Applied | Exception]:
        """Confirmed events in one transaction; failing that, one by one."""
        try:
            async with self._unit() as unit:
                outcomes: list[Applied | Exception] = [
                    await apply_provider_event(event, unit.uow, self.deps, inbox)
                    for event, inbox in events
                ]
                await unit.flush()
            return outcomes
        except Exception as error:
            log.debug("batch of %d provider events fell back to one by one: %s", len(events),
                      error)  # fmt: skip
            return [await self._applied_alone(event, inbox) for event, inbox in events]

    async def _applied_alone(self, event: ProviderEvent, inbox: str) -> Applied | Exception:
        try:
            return await self.apply_confirmed(event, inbox)
        except Exception as failure:  # its own failure, retried by the pipeline
            return failure

    async def _seen(self, scope: str, key: str) -> bool:
        async with self._unit(transaction=False) as unit:
            return await unit.uow.idempotency.find(scope, key) is not None
