"""Stopping a loop stops it, even when the cancellation lands as the thing it awaits ends,
or reaches the loop as another exception, or not at all.

On Python 3.11 `asyncio.wait_for` returns the awaited result in the first case and the
cancellation is lost: the loop goes on and whoever awaits it (the worker's shutdown)
hangs. Both loops below were hit by it; each test lines the two events up in the same
turn of the event loop, which is what made the shutdown hang about 1 run in 20. aiormq
turns the cancelled call of a closing channel into ChannelClosed, or swallows it: the
metrics sampler's shutdown hung on that (billing_worker/background.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from billing_worker import background
from billing_worker.jobs.periodic import Periodic
from billing_worker.messaging.outbox_publisher import OutboxPublisher
from billing_worker.metrics import Metrics
from billing_worker.sampler import Sampler
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


async def test_stop_ends_a_task_that_swallowed_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed = asyncio.Event()

    async def swallows_once() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # as aiormq's Channel.close() can
            swallowed.set()
        await asyncio.Event().wait()  # goes on, its cancellation still pending

    task = asyncio.create_task(swallows_once(), name="swallower")
    await asyncio.sleep(0)
    async with asyncio.timeout(3 * background.RECANCEL_SECONDS):
        await background.stop(task)

    assert swallowed.is_set()
    assert task.cancelled()
    assert "swallower did not end on cancellation" in caplog.text


class Disguised:
    """A source whose first call turns its cancellation into a library's own exception
    (as aiormq's ChannelClosed); later calls wait until cancelled."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()

    async def wait(self) -> None:
        self.calls += 1
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.calls == 1:
                raise ConnectionError("channel closed") from None
            raise


async def ends_at_once(
    stop: Any, task: asyncio.Task[None], source: Disguised, caplog: pytest.LogCaptureFixture
) -> None:
    """`stop()` ends the loop at its first cancellation, which reached it disguised."""
    caplog.set_level(logging.WARNING)
    async with asyncio.timeout(3 * background.RECANCEL_SECONDS):
        await stop()
    assert task.cancelled()
    assert source.calls == 1  # it did not go on to another round
    assert "did not end on cancellation" not in caplog.text  # the first cancel sufficed


async def test_the_sampler_ends_on_a_cancellation_in_disguise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Disguised()
    sampler = Sampler(Metrics(), engine=None, connection=lambda: None, queues=[],  # type: ignore[arg-type]
                      stuck_after_seconds=900, interval_seconds=0)  # fmt: skip
    quiet: Any = sampler
    quiet._database = source.wait
    sampler.start()
    task = sampler.task
    assert task is not None
    await source.entered.wait()
    await ends_at_once(sampler.stop, task, source, caplog)


async def test_a_periodic_job_ends_on_a_cancellation_in_disguise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Disguised()

    class Job(Periodic):
        interval_seconds = 0.0
        _task = None

        async def run_once(self) -> None:
            await source.wait()

    job = Job()
    job.start()
    task = job.task
    assert task is not None
    await source.entered.wait()
    await ends_at_once(job.stop, task, source, caplog)
