"""`billing-worker`: migrate the database, run the worker (and, later, the relay)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from billing_worker import logs
from billing_worker.settings import Settings

log = logging.getLogger("billing_worker")

EXIT_CONFIG = 2


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as invalid:
        first = invalid.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["loc"]:
            name = "BILLING_" + "_".join(str(part) for part in first["loc"]).upper()
            message = f"setting {name} is invalid: {message}"
        # else a rule across settings, whose message names them
        print(f"billing-worker: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from billing_worker.db.migrate import DatabaseUnavailable, migrate

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(migrate(settings.database_dsn))
    except DatabaseUnavailable as down:
        print(f"billing-worker migrate: {down}", file=sys.stderr)
        return EXIT_CONFIG
    log.info("database is at the latest schema")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from billing_worker.app import build_worker
    from billing_worker.startup import StartupError

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    worker = build_worker(settings)
    try:
        asyncio.run(worker.app.run(log_level=logging.INFO))
    except StartupError as error:
        print(f"billing-worker run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
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
    from billing_worker.startup import StartupError

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        run(settings)
    except StartupError as error:
        print(f"billing-worker relay: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    return 0


def _ops(settings: Settings) -> None:
    logs.configure("WARNING", settings.log_format)


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def cmd_dlq(args: argparse.Namespace) -> int:
    from billing_worker.ops import dlq

    settings = _settings()
    _ops(settings)
    url = settings.amqp_url
    if args.action == "purge":
        if not args.yes:
            print("billing-worker dlq purge: refusing without --yes (this deletes them)",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
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
            print("billing-worker dlq replay: say which: --all, --position N, --message-id ID "
                  "or --queue NAME", file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
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
    from billing_worker.db.engine import create_engine, driver_connection

    settings = _settings()
    _ops(settings)

    async def status() -> dict[str, object]:
        engine = create_engine(settings.database_dsn, pool_size=1)
        try:
            async with driver_connection(engine) as db:
                return await outbox.status(db)
        finally:
            await engine.dispose()

    _print(asyncio.run(status()))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from billing_worker.db.engine import create_engine, driver_connection
    from billing_worker.ops.audit import audit, check_names

    settings = _settings()
    _ops(settings)

    async def run() -> list[object]:
        engine = create_engine(settings.database_dsn, pool_size=1)
        try:
            async with driver_connection(engine) as db:
                return list(await audit(db, sandbox_enabled=settings.sandbox_enabled))
        finally:
            await engine.dispose()

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

    settings = _settings(sandbox_enabled=True)  # the demo's deposits go through the sandbox
    logs.configure("ERROR", settings.log_format)

    async def run() -> None:
        await migrate(settings.database_dsn)
        worker = None if args.no_worker else build_worker(settings)
        if worker:
            await worker.app.start()
        try:
            async with DemoClient(settings.amqp_url, print) as client:
                await script(client, print)
        finally:
            if worker:
                await worker.app.stop()

    asyncio.run(run())
    print("\ndemo finished: every reply and event above went through RabbitMQ and PostgreSQL")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing-worker",
        description="Message-driven billing service over RabbitMQ and PostgreSQL. "
        "Every setting comes from BILLING_* environment variables (or a .env file); "
        "see the README's settings table.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = commands.add_parser(
        "migrate",
        help="create the database if missing and apply all migrations (safe to repeat)",
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
        "migrated database (billing-worker migrate).",
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
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
