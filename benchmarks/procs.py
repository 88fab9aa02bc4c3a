"""The consumers under test as subprocesses, and CPU time read from /proc.

CPU seconds are `utime + stime` of `/proc/<pid>/stat` (all threads of the process), taken
at the start and the end of the measured window:

- consumer: the floor, the batched floor or `billing-worker run` process(es);
- postgres: the backends connected to the run's database (`pg_stat_activity`), i.e. the
  work done for this run only (the WAL writer and checkpointer are shared and not counted);
- rabbitmq: every `beam.smp` process: the whole broker, which may also serve others;
- loadgen: this process (publishing and collecting replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg

from benchmarks.env import RunEnv, clean_environ, worker_command

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process; None when it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the name may contain spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Consumer:
    """One side's process(es): the floor, the batched floor, or N `billing-worker run`."""

    side: str
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    async def spawn(self, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        handle = log.open("wb")
        self._files.append(handle)
        self.logs.append(log)
        self.processes.append(
            await asyncio.create_subprocess_exec(
                *command, env=env, cwd=cwd, stdout=handle, stderr=asyncio.subprocess.STDOUT
            )
        )

    def tail(self, index: int, lines: int = 8) -> str:
        text = self.logs[index].read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def died(self) -> list[str]:
        """A problem per process that exited before it was asked to stop."""
        return [
            f"{self.side} process {process.pid} exited early with code {process.returncode}: "
            f"{self.tail(index)}"
            for index, process in enumerate(self.processes)
            if process.returncode is not None
        ]

    async def stop(self, grace: float = 30) -> list[str]:
        """SIGTERM (graceful: in-flight messages finish), then SIGKILL after `grace` seconds."""
        problems = self.died()
        early = {process.pid for process in self.processes if process.returncode is not None}
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for index, process in enumerate(self.processes):
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                await process.wait()
                problems.append(f"{self.side} process {process.pid} ignored SIGTERM for {grace}s")
            else:
                if process.pid not in early and process.returncode not in (0, -signal.SIGTERM):
                    problems.append(
                        f"{self.side} process {process.pid} stopped with code "
                        f"{process.returncode}: {self.tail(index)}"
                    )
        for handle in self._files:
            handle.close()
        return problems


async def start_floor(
    env: RunEnv, queues: list[str], prefetch: int, pool: int, logs: Path
) -> Consumer:
    consumer = Consumer("floor")
    command = [sys.executable, "-m", "benchmarks.floor", "--amqp", env.amqp, "--dsn", env.dsn,
               "--prefetch", str(prefetch), "--pool", str(pool)]  # fmt: skip
    for queue in queues:
        command += ["--queue", queue]
    await consumer.spawn(command, clean_environ(), ROOT, logs / f"{env.name}-floor.log")
    return consumer


async def start_batched_floor(
    env: RunEnv, queues: list[str], prefetch: int, batch: int, logs: Path
) -> Consumer:
    consumer = Consumer("batched")
    command = [sys.executable, "-m", "benchmarks.batched_floor", "--amqp", env.amqp,
               "--dsn", env.dsn, "--prefetch", str(prefetch), "--batch", str(batch)]  # fmt: skip
    for queue in queues:
        command += ["--queue", queue]
    await consumer.spawn(command, clean_environ(), ROOT, logs / f"{env.name}-batched.log")
    return consumer


async def start_workers(env: RunEnv, count: int, settings: dict[str, str], logs: Path) -> Consumer:
    """`billing-worker run` with real settings; cwd is the log directory (no `.env`)."""
    consumer = Consumer("worker")
    environ = clean_environ(
        BILLING_DATABASE_URL=env.sqlalchemy_url,
        BILLING_RABBITMQ_URL=env.amqp,
        BILLING_LOG_LEVEL="WARNING",
        BILLING_SANDBOX_ENABLED="true",  # the plan's deposits complete through the sandbox
        BILLING_LOG_FORMAT="text",
        **settings,
    )
    for index in range(count):
        log = logs / f"{env.name}-worker{index}.log"
        await consumer.spawn([*worker_command(), "run"], environ, logs, log)
    return consumer


Snapshot = dict[str, dict[int, float]]


class CpuMeter:
    """CPU seconds per group of processes between two snapshots."""

    def __init__(self, consumer: Consumer, db: asyncpg.Connection) -> None:
        self.consumer = consumer
        self.db = db
        self.beam = pids_named("beam.smp")

    async def snapshot(self) -> Snapshot:
        backends = await self.db.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        groups = {
            "consumer": self.consumer.pids,
            "postgres": [row["pid"] for row in backends],
            "rabbitmq": self.beam,
            "loadgen": [os.getpid()],
        }
        return {
            name: {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}
            for name, pids in groups.items()
        }

    @staticmethod
    def delta(start: Snapshot, end: Snapshot) -> dict[str, object]:
        """Seconds per group; a process born inside the window counts from zero."""
        spent = {
            name: {pid: cpu - start.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items()}
            for name, pids in end.items()
        }
        result: dict[str, object] = {
            name: round(sum(per_pid.values()), 3) for name, per_pid in spent.items()
        }
        result["consumer_processes"] = [round(v, 3) for v in spent["consumer"].values()]
        return result
