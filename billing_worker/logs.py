"""Logging: one JSON object per line in production, readable text in a terminal.

Every record is scrubbed of customer data and secrets (billing_worker.redaction) and the
Stripe SDK never logs below INFO: at DEBUG it writes request and response bodies.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from billing_worker.redaction import RedactingFilter, install_record_factory


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    install_record_factory()  # handlers of FastStream and uvicorn get scrubbed records too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiormq/aio-pika narrate every reconnect attempt at INFO/WARNING with tracebacks.
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("stripe").setLevel(max(logging.INFO, root.level))
