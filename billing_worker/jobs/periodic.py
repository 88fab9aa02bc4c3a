"""A job the worker runs every `interval_seconds` until shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from billing_worker import background

log = logging.getLogger(__name__)


class Periodic:
    """Mixin: `start()` runs `run_once()` every `interval_seconds`; `stop()` cancels it.

    A failed round is logged and the next round tries again.
    """

    interval_seconds: float
    _task: asyncio.Task[None] | None

    async def run_once(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=type(self).__name__.lower())

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The job's loop (the watchdog restarts it should it ever end)."""
        return self._task

    async def stop(self) -> None:
        if self._task:
            task, self._task = self._task, None
            await background.stop(task)  # a loop that had died was the watchdog's to report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.run_once()
            except Exception as error:
                background.raise_if_cancelled()
                log.warning("%s round failed: %s", type(self).__name__, error)
