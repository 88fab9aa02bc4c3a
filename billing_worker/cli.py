"""`billing-worker`: migrate the database, run the worker and the relay, operate them.

Every subcommand runs through `main`, the one place failures are turned into output: a
failure is ONE line on stderr, `billing-worker <command>: <what to fix>`, and exit code 2
(`ops/failures.py` words the known causes; `--traceback` shows the whole story). Commands
raise; they do not print their own errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from billing_worker import logs
from billing_worker.settings import Settings

log = logging.getLogger("billing_worker")

EXIT_CONFIG = 2  # every failure of a command (settings, services, ports, usage)
EXIT_INTERRUPTED = 130


class _Refused(Exception):
    """A command's own refusal; `main` prints it as it is."""


def _settings(**overrides: Any) -> Settings:
    from billing_worker.startup import check_database_url

    try:
        settings = Settings(**overrides)
    except SettingsError as unreadable:  # a source could not be parsed at all
        raise _Refused(f"the settings cannot be read: {unreadable}") from None
    except ValidationError as invalid:
        first = invalid.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["loc"]:
            name = "BILLING_" + "_".join(str(part) for part in first["loc"]).upper()
            message = f"setting {name} is invalid: {message}"
        # else a rule across settings, whose message names them
        raise _Refused(message) from None
    check_database_url(settings.database_dsn)
    return settings


def _version() -> str:
    try:
        return metadata.version("billing-worker")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def cmd_migrate(args: argparse.Namespace) -> int:
    from billing_worker.db.migrate import migrate

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(migrate(settings.database_dsn))  # DatabaseUnavailable: one line, in main
    log.info("database is at the latest schema")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from billing_worker.app import build_worker

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    worker = build_worker(settings)
    with contextlib.suppress(KeyboardInterrupt):  # a StartupError: one line, in main
        asyncio.run(worker.app.run(log_level=logging.INFO))
    return exit_code(worker)


def exit_code(worker: Any) -> int:
    """How `billing-worker run` exits once its app stopped: non-zero when the watchdog
    gave up on a part, so that the orchestrator starts a fresh process."""
    from billing_worker.watchdog import EXIT_WATCHDOG

    if worker.watchdog.gave_up is None:
        return 0
    print(f"billing-worker run: {worker.watchdog.gave_up} kept stopping; exiting",
          file=sys.stderr)  # fmt: skip
    return EXIT_WATCHDOG


def cmd_relay(args: argparse.Namespace) -> int:
    from billing_worker.relay.runner import run

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):  # a StartupError: one line, in main
        run(settings)
    return 0


def _ops(settings: Settings, level: str = "WARNING") -> None:
    """Logging of the operator commands: warnings only, and nothing from aio-pika/aiormq,
    which narrate a failed connection that `main` reports in its one line."""
    logs.configure(level, settings.log_format)
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def cmd_dlq(args: argparse.Namespace) -> int:
    from billing_worker.ops import dlq

    if args.action == "show" and not args.position:
        raise _Refused("dlq show needs --position N (positions from `billing-worker dlq list`)")
    settings = _settings()
    _ops(settings)
    url = settings.amqp_url
    if args.action == "purge":
        if not args.yes:
            raise _Refused("refusing without --yes (this deletes them)")
        print(f"purged {asyncio.run(dlq.purge(url))} dead letters")
        return 0
    if args.action == "replay":

        def chosen(letter: dlq.DeadLetter) -> bool:
            return (
                args.all
                or letter.position in (args.position or [])
                or (args.message_id is not None and letter.message.message_id == args.message_id)
                or (args.queue is not None and letter.original_queue == args.queue)
            )

        if not (args.all or args.position or args.message_id or args.queue):
            raise _Refused("say which: --all, --position N, --message-id ID or --queue NAME")
        replayed = asyncio.run(dlq.replay(url, args.limit, chosen))
        _print(replayed)
        print(f"replayed {len(replayed)} dead letters", file=sys.stderr)
        return 0

    async def read() -> list[dict[str, object]]:
        async with dlq.dead_letters(url, args.limit) as (_, letters):
            if args.action == "show":
                return [letter.details() for letter in letters if letter.position in args.position]
            return [letter.summary() for letter in letters]

    _print(asyncio.run(read()))
    if args.action == "list":
        warning = dlq.fullness_warning(asyncio.run(dlq.depth(url)), settings.dead_letter_max)
        if warning:
            print(f"billing-worker dlq: {warning}", file=sys.stderr)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from billing_worker.db import outbox
    from billing_worker.ops.services import database

    settings = _settings()
    _ops(settings)

    async def status() -> dict[str, object]:
        async with database(settings) as db:
            return await outbox.status(db)

    _print(asyncio.run(status()))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from billing_worker.ops.audit import audit, check_names
    from billing_worker.ops.services import database

    settings = _settings()
    _ops(settings)

    async def run() -> list[object]:
        async with database(settings) as db:
            return list(await audit(db, sandbox_enabled=settings.sandbox_enabled))

    findings = asyncio.run(run())
    for finding in findings:
        print(f"FAIL {finding.check}: {len(finding.rows)} rows")  # type: ignore[attr-defined]
        _print(finding.rows[: args.limit])  # type: ignore[attr-defined]
    names = check_names(sandbox_enabled=settings.sandbox_enabled)
    print(f"audit: {len(names) - len(findings)} of {len(names)} checks passed")
    return 1 if findings else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from billing_worker.app import build_worker
    from billing_worker.db.migrate import migrate
    from billing_worker.ops.demo import DemoClient, script
    from billing_worker.startup import PortInUse

    settings = _settings(sandbox_enabled=True)  # the demo's deposits go through the sandbox
    _ops(settings, "ERROR")

    async def run() -> None:
        await migrate(settings.database_dsn)
        worker = None if args.no_worker else build_worker(settings)
        if worker:
            try:
                await worker.app.start()
            except PortInUse as taken:
                raise _Refused(
                    f"{taken}; or let the demo use the worker already running: "
                    "billing-worker demo --no-worker"
                ) from taken
        try:
            async with DemoClient(settings.amqp_url, print) as client:
                await script(client, print)
        finally:
            if worker:
                await worker.app.stop()

    asyncio.run(run())
    print("\ndemo finished: every reply and event above went through RabbitMQ and PostgreSQL")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from billing_worker.ops import status

    if args.max_outbox_lag <= 0:
        raise _Refused("--max-outbox-lag needs a number of seconds above 0")
    settings = _settings()
    _ops(settings)
    management = args.management_url or status.management_url(settings.amqp_url)
    report = asyncio.run(
        status.collect(
            settings,
            max_outbox_lag=args.max_outbox_lag,
            management=None if management == "none" else management,
        )
    )
    print(json.dumps(report.as_json(), indent=2) if args.json else status.render(report))
    return status.EXIT_HEALTHY if report.healthy else status.EXIT_UNHEALTHY


def cmd_docs(args: argparse.Namespace) -> int:
    from billing_worker import contract_docs

    if args.check:
        stale = contract_docs.stale()
        for path in stale:
            print(f"stale: {path} (run `billing-worker docs`)", file=sys.stderr)
        return 1 if stale else 0
    for path in contract_docs.write():
        print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="billing-worker",
        description="Message-driven billing service over RabbitMQ and PostgreSQL. "
        "Every setting comes from BILLING_* environment variables (or a .env file); "
        "see the README's settings table. Any failure is one line on stderr and exit "
        "code 2.",
    )
    parser.add_argument("--version", action="version", version=f"billing-worker {_version()}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on a failure, show the whole traceback instead of its one-line reason",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    migrate = commands.add_parser(
        "migrate",
        help="create the database if missing and apply all migrations (safe to repeat); "
        "the only command that creates the database",
        description="Create the database named by BILLING_DATABASE_URL if it does not exist "
        "and upgrade it to the latest schema. Running it again changes nothing.",
    )
    migrate.set_defaults(func=cmd_migrate)
    run = commands.add_parser(
        "run",
        help="run the worker: consume commands and provider events, publish events",
        description="Declare the RabbitMQ topology, consume every billing queue with "
        "BILLING_PREFETCH messages in flight, and publish the outbox to billing.events. "
        "Stops gracefully on SIGTERM/SIGINT, finishing in-flight messages. Needs a "
        "migrated database (billing-worker migrate); a missing one is refused, not created.",
    )
    run.set_defaults(func=cmd_run)
    relay = commands.add_parser(
        "relay",
        help="run the webhook relay: verify Stripe/YooKassa callbacks, queue them",
        description="Listen on BILLING_RELAY_HOST:BILLING_RELAY_PORT for POST /webhooks/stripe "
        "(Stripe-Signature checked with BILLING_STRIPE_WEBHOOK_SECRET) and POST "
        "/webhooks/yookassa (source address checked against BILLING_YOOKASSA_ALLOWED_NETWORKS), "
        "and publish each verified callback to billing.provider-events; answers 2xx only "
        "after the broker confirmed it, 503 while the broker is away. GET /healthz reports "
        "broker connectivity. Holds no database connection.",
    )
    relay.set_defaults(func=cmd_relay)
    dlq = commands.add_parser(
        "dlq",
        help="inspect and repair the dead-letter queue (list, show, replay, purge)",
        description="Dead letters carry their reason in x-billing-reason and their queue in "
        "x-billing-original-queue. Positions are the order in the queue at the time of the "
        "call (list first). Reading never removes anything.",
    )
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("--position", type=int, action="append", help="position(s) from `dlq list`")
    dlq.add_argument("--message-id", help="replay the dead letter with this AMQP message id")
    dlq.add_argument("--queue", help="replay every dead letter from this queue")
    dlq.add_argument("--all", action="store_true", help="replay every dead letter")
    dlq.add_argument("--limit", type=int, default=100, help="look at most at this many (100)")
    dlq.add_argument("--yes", action="store_true", help="confirm purge")
    dlq.set_defaults(func=cmd_dlq)
    outbox = commands.add_parser("outbox", help="outbox status: unpublished events, lag")
    outbox.add_argument("action", choices=["status"])
    outbox.set_defaults(func=cmd_outbox)
    audit = commands.add_parser(
        "audit",
        help="check the ledger's invariants; exit 1 with the offending rows",
        description="Every balance equals the sum of its completed transactions and is not "
        "negative; no transaction is processing without a provider reference or has an "
        "audit trail the state machine forbids; invoice numbers have no gaps; every paid "
        "invoice has one payment; every paid subscription period has one charge.",
    )
    audit.add_argument("--limit", type=int, default=20, help="rows shown per failed check")
    audit.set_defaults(func=cmd_audit)
    demo = commands.add_parser(
        "demo",
        help="a guided end-to-end run on the local services (sandbox provider)",
        description="Migrates the database, starts a worker in this process and plays a "
        "client: deposit, withdraw, a refusal, an invoice, a malformed message; prints every "
        "command, reply and event as it flows.",
    )
    demo.add_argument("--no-worker", action="store_true", help="use a worker already running")
    demo.set_defaults(func=cmd_demo)
    status = commands.add_parser(
        "status",
        help="health of the deployment: queues, dead letters, outbox, stuck payments",
        description="Per queue the worker consumes: ready messages and consumers (AMQP "
        "passive declares, no management plugin needed) and unacknowledged messages (only "
        "when the RabbitMQ management API answers, else unknown); the dead-letter queue's "
        "depth; unpublished outbox rows and the oldest one's age; payments processing and "
        "untouched for over BILLING_RECONCILE_AFTER_SECONDS plus two "
        "BILLING_RECONCILE_INTERVAL_SECONDS. Changes nothing. Exit code: 0 healthy; 1 "
        "something is wrong (dead letters, outbox lag over --max-outbox-lag, stuck payments, "
        "a queue missing or without a consumer), each problem listed; 2 RabbitMQ or "
        "PostgreSQL unreachable or a setting wrong (one line on stderr).",
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.add_argument(
        "--max-outbox-lag",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="oldest unpublished event's age above which the outbox lags (60)",
    )
    status.add_argument(
        "--management-url",
        metavar="URL",
        help="RabbitMQ management API for the unacked counts (default: the broker's host, "
        "port 15672, or 15671 for amqps://, with the broker login); 'none' to skip it",
    )
    status.set_defaults(func=cmd_status)
    docs = commands.add_parser(
        "docs",
        help="regenerate contracts/asyncapi.json, contracts/CATALOGUE.md and the README index",
        description="Generate the AsyncAPI 3.0 document from the app's subscribers and "
        "publishers (FastStream's generator, plus request/reply and examples) and the "
        "Markdown catalogue from billing_contracts. --check only reports stale files.",
    )
    docs.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    docs.set_defaults(func=cmd_docs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the only place a failure becomes output (see the module doc)."""
    args = build_parser().parse_args(argv)
    prog = f"billing-worker {args.command}"
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.traceback:
            raise
        print(f"{prog}: {_reason(error)}", file=sys.stderr)
        return EXIT_CONFIG


def _reason(error: BaseException) -> str:
    from billing_worker.ops.failures import flat, one_line

    if isinstance(error, _Refused):
        return flat(str(error))
    return one_line(error)


if __name__ == "__main__":
    raise SystemExit(main())
