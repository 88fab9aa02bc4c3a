"""`billing-worker`: migrate the database, run the worker (and, later, the relay)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from billing_worker import logs
from billing_worker.settings import Settings

log = logging.getLogger("billing_worker")

EXIT_CONFIG = 2


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as invalid:
        first = invalid.errors()[0]
        name = "BILLING_" + "_".join(str(part) for part in first["loc"]).upper()
        raise SystemExit(f"billing-worker: setting {name} is invalid: {first['msg']}") from None


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
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
