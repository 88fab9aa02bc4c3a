"""The watchdog: a part of the worker that stops is logged at ERROR, shown down by
/healthz (503, naming it) and restarted - or, past its restarts, the process exits
non-zero. A consumer whose connection the broker closed consumes again.

Each test runs a real worker (in this process, so a part can be broken from here) on
its own database and vhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from billing_contracts import names
from billing_worker.app import Worker, build_worker, restarter
from billing_worker.cli import exit_code
from billing_worker.messaging.coalescer import Coalescer
from billing_worker.watchdog import EXIT_WATCHDOG, Part, Watchdog
from fakes.server import free_port
from support.rpc import Bus
from support.settings import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class InjectedFailure(BaseException):
    """What kills a loop for good: not an Exception, so no `except Exception` keeps it."""


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.05)


def watchdog_settings(database_url: str, vhost_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "metrics_port": free_port(),
        "metrics_host": "127.0.0.1",
        "watchdog_interval_seconds": 0.1,
        "watchdog_consumer_grace_seconds": 0.5,
    }
    return make_settings(database_url, vhost_url, **{**values, **overrides})


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        worker.app,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.settings.metrics_port}") as http,
    ):
        yield http


def break_publisher(worker: Worker, broken: asyncio.Event) -> None:
    """The outbox publisher's loop dies while `broken` is set (a test-only fault); the
    last drain of a shutdown still works."""
    drain = worker.publisher.drain

    async def failing_drain() -> int:
        if broken.is_set() and asyncio.current_task() is worker.publisher.task:
            raise InjectedFailure("injected: the outbox publisher dies")
        return await drain()

    worker.publisher.drain = failing_drain  # type: ignore[method-assign]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_dead_outbox_publisher_is_reported_shown_down_and_restarted(
    database_url: str, vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing_worker")
    worker = build_worker(watchdog_settings(database_url, vhost_url, watchdog_max_restarts=100))
    broken = asyncio.Event()
    broken.set()
    async with running(worker) as http:
        break_publisher(worker, broken)  # the running loop dies at its next round

        await until(lambda: any("outbox_publisher has stopped" in e for e in errors(caplog)))
        stopped = next(e for e in errors(caplog) if "outbox_publisher has stopped" in e)
        assert "InjectedFailure: injected: the outbox publisher dies" in stopped
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["outbox_publisher"] == "down"
        assert health.json()["database"] == health.json()["broker"] == "up"
        await until(lambda: any("restarting outbox_publisher" in e for e in errors(caplog)))

        broken.clear()  # the next restart lives
        await until(lambda: worker.watchdog.down() == {})
        health = await http.get("/healthz")
        assert health.status_code == 200, health.text
        assert worker.watchdog.gave_up is None

        # ...and it publishes again: a command's event reaches the events exchange.
        bus = Bus(vhost_url)
        await bus.start()
        try:
            published = worker.publisher.published
            reply = await bus.call(
                names.WALLET_DEPOSIT,
                {
                    "idempotency_key": uuid.uuid4().hex,
                    "user_id": f"wd-{uuid.uuid4().hex[:8]}",
                    "provider": "sandbox",
                    "amount": {"amount": "1.00", "currency": "USD"},
                },
            )
            assert reply["ok"], reply
            await until(lambda: worker.publisher.published > published)
        finally:
            await bus.close()


async def test_a_part_that_keeps_dying_makes_the_process_exit_non_zero(
    database_url: str, vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing_worker")
    worker = build_worker(watchdog_settings(database_url, vhost_url, watchdog_max_restarts=2))
    broken = asyncio.Event()
    broken.set()
    break_publisher(worker, broken)  # before start-up: its very first run dies

    await asyncio.wait_for(worker.app.run(), 60)  # returns only because it was told to exit

    assert worker.watchdog.gave_up == "outbox_publisher"
    assert exit_code(worker) == EXIT_WATCHDOG != 0
    restarts = [e for e in errors(caplog) if "restarting outbox_publisher" in e]
    assert len(restarts) == 2
    assert any("outbox_publisher stopped again after 2 restarts" in e for e in errors(caplog))


async def test_reconciler_and_renewals_that_die_are_restarted(
    database_url: str, vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing_worker")
    worker = build_worker(watchdog_settings(database_url, vhost_url))
    async with running(worker) as http:
        for job, name in ((worker.reconciler, "reconciler"), (worker.renewals, "renewals")):
            dead = job.task
            assert dead is not None
            dead.cancel()  # killed from outside, as a stray cancellation would
            await until(lambda name=name: any(f"{name} has stopped" in e for e in errors(caplog)))
            await until(lambda job=job, dead=dead: job.task is not dead and not job.task.done())
            await until(lambda name=name: name not in worker.watchdog.down())
        assert (await http.get("/healthz")).status_code == 200


async def test_a_coalescer_left_without_its_flusher_is_reported_and_flushed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its flusher cancelled in the middle of a batch (a stray cancellation): that batch's
    callers get an error (the pipeline retries them) instead of waiting forever, and the
    commands queued behind it are flushed by the watchdog."""
    caplog.set_level(logging.INFO, logger="billing_worker")
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()
        return [item * 10 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(run, max_batch=8)
    watchdog = Watchdog([Part("coalescer q", coalescer.stalled, restarter(coalescer.flush))])
    first = asyncio.create_task(coalescer.submit(1))
    await until(lambda: len(batches) == 1)
    behind = [asyncio.create_task(coalescer.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    assert coalescer._task is not None
    coalescer._task.cancel()

    with pytest.raises(RuntimeError, match="flusher was cancelled"):
        await asyncio.wait_for(first, 10)
    await watchdog.check_once()
    assert watchdog.down() == {"coalescer q": "2 commands wait and no flusher runs them"}
    assert any("coalescer q has stopped: 2 commands wait" in e for e in errors(caplog))
    assert await asyncio.wait_for(asyncio.gather(*behind), 10) == [20, 30]
    await watchdog.check_once()
    assert watchdog.down() == {}


def close_connections(vhost: str) -> None:
    closed = subprocess.run(  # noqa: S603 - a fixed rabbitmqctl command on the test's vhost
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "watchdog test"],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert closed.returncode == 0, closed.stderr


async def test_consumers_consume_again_after_the_broker_closed_their_connection(
    database_url: str, vhost_url: str
) -> None:
    worker = build_worker(watchdog_settings(database_url, vhost_url))
    vhost = unquote(urlsplit(vhost_url).path[1:])
    async with running(worker) as http:
        await until(lambda: worker.watchdog.down() == {} and worker.watchdog.parts != {})
        for _ in range(3):
            await asyncio.to_thread(close_connections, vhost)
        await until(lambda: worker.watchdog.down() == {}, timeout=90)
        await until(lambda: _ok(http), timeout=90)
        bus = Bus(vhost_url)
        await bus.start()
        try:
            reply = await bus.call(names.WALLET_BALANCE, {"user_id": "wd-nobody"}, timeout=60)
            assert reply["ok"], reply
        finally:
            await bus.close()


async def test_a_consumer_the_broker_stopped_delivering_to_is_restarted(
    database_url: str, vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing_worker")
    # A grace long enough for /healthz to be seen naming it before the restart.
    worker = build_worker(
        watchdog_settings(database_url, vhost_url, watchdog_consumer_grace_seconds=3.0)
    )
    async with running(worker) as http:
        [subscriber] = [
            s for s in worker.broker.subscribers if s.queue.name == names.WALLET_BALANCE
        ]
        channel = await subscriber._queue_obj.channel.get_underlay_channel()
        await channel.basic_cancel(subscriber._consumer_tag)  # the broker stops delivering

        name = f"consumer {names.WALLET_BALANCE}"

        async def shown_down() -> bool:  # within its grace already: not ready, naming it
            health = await http.get("/healthz")
            return health.status_code == 503 and health.json().get(name) == "down"

        await until(shown_down)
        await until(lambda: any(f"{name} has stayed stopped" in e for e in errors(caplog)))
        stopped = next(e for e in errors(caplog) if f"{name} has stayed stopped" in e)
        assert "the broker no longer delivers to it" in stopped
        await until(lambda: any(f"restarting {name}" in e for e in errors(caplog)))
        await until(lambda: name not in worker.watchdog.down())
        assert (await http.get("/healthz")).status_code == 200
        bus = Bus(vhost_url)
        await bus.start()
        try:
            reply = await bus.call(names.WALLET_BALANCE, {"user_id": "wd-nobody"}, timeout=30)
            assert reply["ok"], reply
        finally:
            await bus.close()


async def _ok(http: httpx.AsyncClient) -> bool:
    return (await http.get("/healthz")).status_code == 200
