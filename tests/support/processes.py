"""Real `billing-worker run` / `billing-worker relay` processes for fault tests.

Each process logs (JSON) to its own file; `kill()` is SIGKILL (no shutdown hooks run),
`stop()` is the graceful SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = {"run": "billing worker consuming", "relay": "webhook relay listening"}


@dataclass
class Process:
    command: str  # "run" or "relay"
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    _offset: int = field(default=0, repr=False)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as output:  # the child keeps its own descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "billing_worker", self.command],
                env={**clean, "BILLING_LOG_FORMAT": "json", **self.env},
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd="/",
            )
        self.starts += 1

    def text(self, since_start: bool = False) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            if since_start:
                handle.seek(self._offset)
            return handle.read().decode(errors="replace")

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while READY[self.command] not in self.text(since_start=True):
            assert self.alive, f"{self.command} exited {self.returncode}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.command} never became ready"
            await asyncio.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        assert self.process is not None
        assert self.alive
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.kills += 1

    async def stop(self, timeout: float = 90) -> int | None:
        if not self.alive:
            return self.returncode
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 30)
            raise

    def ensure_dead(self) -> None:
        """For `finally` blocks: never leave a child behind."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(30)


def worker_env(database_url: str, rabbitmq_url: str, **settings: object) -> dict[str, str]:
    """`BILLING_*` variables for a worker/relay; keyword names are setting names."""
    env = {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_RABBITMQ_URL": rabbitmq_url,
        "BILLING_LOG_LEVEL": "INFO",
        "BILLING_OUTBOX_POLL_INTERVAL_MS": "200",
        "BILLING_DB_POOL_SIZE": "8",
        "BILLING_SANDBOX_ENABLED": "true",  # the tests drive deposits through the sandbox
    }
    env.update({f"BILLING_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def tracebacks(text: str) -> list[str]:
    """Log lines that carry a traceback (JSON logs put it in `exc_info`)."""
    return [line for line in text.splitlines() if "Traceback" in line]


def escaped(text: str) -> list[str]:
    """Tracebacks of exceptions that escaped the worker's error policy (logged by the
    framework), as opposed to the pipeline's own "attempt n failed, retrying" warnings."""
    found = []
    for line in tracebacks(text):
        try:
            logger = json.loads(line).get("logger", "")
        except ValueError:
            logger = ""
        if logger != "billing_worker.messaging.pipeline":
            found.append(line)
    return found
