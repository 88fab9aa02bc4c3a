"""Coalescing: commands that arrive while a database transaction is running wait and go
together into the next one (natural batching: no timer, no added latency when idle).

Each caller still gets its own result or its own exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(
        self, run: Callable[[list[T]], Awaitable[list[R | Exception]]], max_batch: int
    ) -> None:
        self._run = run
        self._max = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self.flush()
        return await future

    def flush(self) -> None:
        """Start the flusher if commands wait and none runs (also the watchdog's restart)."""
        if self._waiting and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._drain(), name="coalescer")

    async def stalled(self) -> str | None:
        """The watchdog's probe: commands waiting with no flusher to run them."""
        if self._waiting and (self._task is None or self._task.done()):
            return f"{len(self._waiting)} commands wait and no flusher runs them"
        return None

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                self.batches += 1
                self.items += len(batch)
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                except BaseException:
                    # Cancelled: its callers must not wait forever (they are retried).
                    # What still waits is the watchdog's to flush (see `stalled`).
                    stopped = RuntimeError("the coalescer's flusher was cancelled")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(stopped)
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):  # that item's own failure
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            if self._task is asyncio.current_task():
                self._task = None
