"""Stopping the worker's background loops (outbox publisher, jobs, sampler, watchdog).

A loop is stopped by cancelling its task, and a cancellation can be lost on the way: a
library may turn it into an exception of its own, which the loop then catches as a
failed round and goes on. aiormq does, for the call of a channel that closes while the
call is being cancelled (its waiter is rejected with ChannelClosed instead), and
swallows it in `Channel.close()`, so a loop could keep running with its cancellation
pending, and the shutdown that waits for it hung. So:

- a loop calls `raise_if_cancelled()` where it would go on after a failure, and ends;
- `stop()` cancels again, every `RECANCEL_SECONDS`, until the task has ended (logged:
  a loop that needed it was stopped inside a library call).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 2.0


def raise_if_cancelled() -> None:
    """End the current task's loop if it is being cancelled, whether or not a
    CancelledError reached it (see the module docstring)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended, however it ends."""
    task.cancel()
    while True:
        done, _ = await asyncio.wait([task], timeout=RECANCEL_SECONDS)
        if done:
            return
        log.warning("%s did not end on cancellation: cancelling it again", task.get_name())
        task.cancel()
