"""Stopping a loop stops it, even when the cancellation lands as the thing it awaits ends.

On Python 3.11 `asyncio.wait_for` returns the awaited result in that case and the
cancellation is lost: the loop goes on and whoever awaits it (the worker's shutdown)
hangs. Both loops below were hit by it; each test lines the two events up in the same
turn of the event loop, which is what made the shutdown hang about 1 run in 20.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from billing_worker.messaging.outbox_publisher import OutboxPublisher
from billing_worker.watchdog import Part, Watchdog


async def test_the_watchdog_stops_while_a_probe_completes() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def probe() -> str | None:
        entered.set()
        await release.wait()
        return None

    async def restart() -> None:
        raise AssertionError("nothing to restart")

    watchdog = Watchdog([Part("part", probe, restart)], interval=0)
    watchdog.start()
    task = watchdog._task
    assert task is not None
    await entered.wait()
    release.set()  # the probe ends in the next turn...
    with contextlib.suppress(TimeoutError):  # (stop() swallows the test's own timeout)
        async with asyncio.timeout(5):
            await watchdog.stop()  # ...as its round is cancelled
    assert task.done(), "the watchdog's loop runs on"
    task.cancel()


async def test_the_outbox_publisher_stops_while_it_is_woken() -> None:
    publisher = OutboxPublisher(engine=None, send=None)  # type: ignore[arg-type]
    rounds = 0

    async def drain() -> int:
        nonlocal rounds
        rounds += 1
        return 0

    async def measure_lag() -> None:
        return None

    quiet: Any = publisher
    quiet.drain, quiet._measure_lag = drain, measure_lag
    publisher.start()
    while rounds == 0:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # now waiting to be woken
    publisher.notify()  # a commit wakes it in the next turn...
    async with asyncio.timeout(5):
        await publisher.stop()  # ...as it is cancelled
    assert publisher.task is None
