"""Whether this process may stop and start the machine's PostgreSQL and RabbitMQ."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def manageable_services() -> str | None:
    """Why PostgreSQL and RabbitMQ cannot be restarted from here, or None if they can.

    Set BILLING_TEST_NO_RESTARTS=1 on a machine whose services others are using.
    """
    if os.environ.get("BILLING_TEST_NO_RESTARTS"):
        return "BILLING_TEST_NO_RESTARTS is set (shared services must stay up)"
    if os.geteuid() != 0:
        return "restarting the services needs root"
    for tool in ("rabbitmqctl", "pg_ctlcluster"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/etc/postgresql").is_dir() or not any(Path("/etc/postgresql").iterdir()):
        return "no local PostgreSQL cluster"
    return None
