"""`billing-worker status`: is this deployment healthy, and if not, what is wrong.

It reads, from the outside and changing nothing:

- every queue the worker consumes: ready messages and consumers by AMQP passive declare
  (ops/health.py; no management plugin needed), and unacknowledged messages when the
  RabbitMQ management API answers (AMQP has no way to ask; otherwise they are unknown);
- the dead-letter queue's depth;
- the outbox: unpublished events and the age of the oldest (the lag of billing.events);
- payments in `processing` that neither a callback nor the reconciler touched for longer
  than the reconciler should take to look at them.

The verdict is the exit code, so that it works as a check (cron, a probe, CI):
0 healthy; 1 something is wrong (each problem listed); 2 RabbitMQ or PostgreSQL cannot be
reached, or a setting is wrong (one line on stderr, as for every command).
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from billing_worker.ops import health
from billing_worker.ops.services import amqp_connection, database
from billing_worker.settings import Settings

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
DEFAULT_MAX_OUTBOX_LAG = 60.0
MANAGEMENT_PORT = {"amqp": 15672, "amqps": 15671}
MANAGEMENT_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class QueueReport:
    queue: str
    messages: int | None  # None: the queue does not exist
    consumers: int | None
    unacked: int | None  # None: unknown (no management API answered)


@dataclass(slots=True)
class Report:
    queues: list[QueueReport]
    dead_letter: QueueReport
    outbox: health.OutboxState
    max_outbox_lag_s: float
    stuck_payments: int
    stuck_after_s: float
    unacked_source: str  # where the unacked counts came from, or why they are unknown
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "queues": [asdict(queue) for queue in self.queues],
            "dead_letter": asdict(self.dead_letter),
            "outbox": {
                "unpublished": self.outbox.unpublished,
                "oldest_unpublished_age_s": self.outbox.oldest_unpublished_age_s,
                "max_lag_s": self.max_outbox_lag_s,
            },
            "stuck_payments": {"count": self.stuck_payments, "older_than_s": self.stuck_after_s},
            "unacked_source": self.unacked_source,
        }


def judge(report: Report) -> list[str]:
    """Every reason the deployment is not healthy, most urgent first."""
    problems = []
    dead = report.dead_letter
    if dead.messages is None:
        problems.append(f"{dead.queue} does not exist: no worker has declared the topology")
    elif dead.messages:
        problems.append(
            f"{dead.queue} holds {dead.messages} dead letters: see `billing-worker dlq list`"
        )
    lag = report.outbox.oldest_unpublished_age_s
    if lag is not None and lag > report.max_outbox_lag_s:
        problems.append(
            f"the outbox lags: {report.outbox.unpublished} events unpublished, the oldest for "
            f"{lag:.0f}s (over {report.max_outbox_lag_s:g}s): is RabbitMQ refusing publishes, "
            "or no worker running?"
        )
    if report.stuck_payments:
        problems.append(
            f"{report.stuck_payments} payments processing, untouched for over "
            f"{report.stuck_after_s:g}s: is the reconciler running (billing-worker run)?"
        )
    missing = [queue.queue for queue in report.queues if queue.messages is None]
    idle = [
        queue.queue for queue in report.queues if queue.messages is not None and not queue.consumers
    ]
    if missing:
        problems.append(
            f"{len(missing)} queues do not exist (no worker declared them): {', '.join(missing)}"
        )
    if idle:
        problems.append(
            f"{len(idle)} queues have no consumer (no worker running?): {', '.join(idle)}"
        )
    return problems


def management_url(amqp_url: str) -> str:
    """Where the management API would be: the AMQP host, the plugin's default port."""
    parts = urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    return f"{scheme}://{parts.hostname}:{MANAGEMENT_PORT.get(parts.scheme, 15672)}"


def _vhost(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path[1:]) or "/"


def _fetch_unacked(base: str, amqp_url: str) -> dict[str, int]:
    """GET /api/queues/<vhost> with the AMQP login (blocking: run it in a thread)."""
    parts = urlsplit(amqp_url)
    login = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
    request = urllib.request.Request(  # noqa: S310 - an http(s) URL we built or were given
        f"{base.rstrip('/')}/api/queues/{quote(_vhost(amqp_url), safe='')}"
        "?columns=name,messages_unacknowledged",
        headers={"Authorization": "Basic " + base64.b64encode(login.encode()).decode()},
    )
    with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:  # noqa: S310
        rows = json.load(response)
    return {
        str(row["name"]): int(row.get("messages_unacknowledged") or 0)
        for row in rows
        if isinstance(row, dict) and "name" in row
    }


async def unacked_counts(base: str | None, amqp_url: str) -> tuple[dict[str, int] | None, str]:
    """Unacked messages per queue from the management API, or None and why not."""
    if base is None:
        return None, "unknown: the management API is not asked (--management-url none)"
    try:
        counts = await asyncio.to_thread(_fetch_unacked, base, amqp_url)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = getattr(error, "reason", None) or error
        return None, f"unknown: the management API at {base} did not answer ({reason})"
    return counts, f"the management API at {base}"


async def collect(settings: Settings, *, max_outbox_lag: float, management: str | None) -> Report:
    """Everything `status` shows; raises CommandError when a service is unreachable."""
    queues = health.command_queues(settings)
    async with amqp_connection(settings.amqp_url) as connection:
        states = await health.queue_states_on(connection, [*queues, health.DEAD_LETTER_QUEUE])
    unacked, source = await unacked_counts(management, settings.amqp_url)
    stuck_after = health.stuck_after_seconds(settings)
    async with database(settings) as db:
        outbox = await health.outbox_state(db)
        stuck = await health.stuck_payments(db, stuck_after)

    def report(state: health.QueueState) -> QueueReport:
        known = None if unacked is None or state.messages is None else unacked.get(state.queue)
        return QueueReport(state.queue, state.messages, state.consumers, known)

    result = Report(
        queues=[report(state) for state in states[:-1]],
        dead_letter=report(states[-1]),
        outbox=outbox,
        max_outbox_lag_s=max_outbox_lag,
        stuck_payments=stuck,
        stuck_after_s=stuck_after,
        unacked_source=source,
    )
    result.problems = judge(result)
    return result


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(report: Report) -> str:
    """The human table: a row per queue, then the outbox, stuck payments and the verdict."""
    width = max(len(queue.queue) for queue in [*report.queues, report.dead_letter])
    lines = [f"{'QUEUE':<{width}}  {'READY':>7}  {'CONSUMERS':>9}  {'UNACKED':>7}"]
    for queue in [*report.queues, report.dead_letter]:
        lines.append(
            f"{queue.queue:<{width}}  {_cell(queue.messages):>7}  {_cell(queue.consumers):>9}  "
            f"{_cell(queue.unacked):>7}"
        )
    lines.append(f"unacked: {report.unacked_source}; '-' in READY: the queue does not exist")
    age = report.outbox.oldest_unpublished_age_s
    lines.append(
        f"outbox: {report.outbox.unpublished} unpublished, oldest "
        f"{'none' if age is None else f'{age:.1f}s'} (limit {report.max_outbox_lag_s:g}s)"
    )
    lines.append(
        f"stuck payments: {report.stuck_payments} processing untouched for over "
        f"{report.stuck_after_s:g}s"
    )
    if report.healthy:
        lines.append("status: healthy")
    else:
        count = len(report.problems)
        lines.append(f"status: {count} problem{'' if count == 1 else 's'}")
        lines.extend(f"  - {problem}" for problem in report.problems)
    return "\n".join(lines)
