"""Administering the local test broker: vhosts, users, permissions, definitions.

Through RabbitMQ's management HTTP API when it answers (`make services` enables the
plugin), else through `rabbitmqctl`. The difference is time: an HTTP call takes a few
milliseconds, while every `rabbitmqctl` call boots an Erlang VM, about a second of CPU
on a 2-core machine. The fault suite made three such calls a test, and the whole suite
over two hundred.

Closing a vhost's connections stays with `rabbitmqctl close_all_connections`: the
management API only lists a connection once its statistics arrive, so a connection
that has just reconnected could escape it.

The API's address is BILLING_TEST_RABBITMQ_MANAGEMENT_URL, by default port 15672 of
the broker's host. The credentials are those of BILLING_TEST_RABBITMQ_URL (guest/guest).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _amqp() -> Any:
    return urlsplit(os.environ.get("BILLING_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL))


def local(url: str) -> bool:
    """Whether `url`'s broker runs on this machine, where the tests may administer it."""
    return urlsplit(url).hostname in {"127.0.0.1", "localhost"}


@functools.cache
def _api() -> httpx.Client | None:
    """A client of the management API, or None when it does not answer."""
    amqp = _amqp()
    base = os.environ.get(
        "BILLING_TEST_RABBITMQ_MANAGEMENT_URL", f"http://{amqp.hostname or '127.0.0.1'}:15672"
    )
    client = httpx.Client(
        base_url=f"{base.rstrip('/')}/api",
        auth=(amqp.username or "guest", amqp.password or "guest"),
        timeout=60,
    )
    try:
        client.get("/overview").raise_for_status()
    except httpx.HTTPError:
        client.close()
        return None
    atexit.register(client.close)
    return client


def available() -> bool:
    """Whether this machine can administer the broker at all (API or rabbitmqctl)."""
    return _api() is not None or shutil.which("rabbitmqctl") is not None


def _q(name: str) -> str:
    return quote(name, safe="")


def _call(method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
    api = _api()
    assert api is not None
    response = api.request(method, path, json=body)
    if missing_ok and response.status_code == 404:
        return None
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def rabbitmqctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(  # noqa: S603 - the installed rabbitmqctl
        ["rabbitmqctl", "-q", *args],  # noqa: S607
        check=check, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def add_vhost(name: str) -> None:
    if _api():
        _call("PUT", f"/vhosts/{_q(name)}")
    else:
        rabbitmqctl("add_vhost", name)


def delete_vhost(name: str) -> None:
    """The vhost and everything in it; no error when it is already gone."""
    if _api():
        _call("DELETE", f"/vhosts/{_q(name)}", missing_ok=True)
    else:
        rabbitmqctl("delete_vhost", name, check=False)


def add_user(name: str, password: str) -> None:
    """A user without tags (no management access)."""
    if _api():
        _call("PUT", f"/users/{_q(name)}", {"password": password, "tags": ""})
    else:
        rabbitmqctl("add_user", name, password)


def change_password(name: str, password: str) -> None:
    """An existing user's new password; its tags stay."""
    if _api():
        tags = _call("GET", f"/users/{_q(name)}")["tags"]
        _call("PUT", f"/users/{_q(name)}", {"password": password, "tags": ",".join(tags)})
    else:
        rabbitmqctl("change_password", name, password)


def delete_user(name: str) -> None:
    """No error when it is already gone."""
    if _api():
        _call("DELETE", f"/users/{_q(name)}", missing_ok=True)
    else:
        rabbitmqctl("delete_user", name, check=False)


def set_permissions(vhost: str, user: str, configure: str, write: str, read: str) -> None:
    if _api():
        body = {"configure": configure, "write": write, "read": read}
        _call("PUT", f"/permissions/{_q(vhost)}/{_q(user)}", body)
    else:
        rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)


def permitted_users(vhost: str) -> set[str]:
    """The users with permissions on the vhost."""
    if _api():
        listed = _call("GET", f"/vhosts/{_q(vhost)}/permissions", missing_ok=True) or []
        return {entry["user"] for entry in listed}
    listed = rabbitmqctl("list_permissions", "--no-table-headers", "-p", vhost, check=False)
    return {line.split("\t")[0] for line in listed.splitlines() if line.strip()}


def import_definitions(document: dict[str, Any]) -> None:
    """A definitions document (the format of `deploy/rabbitmq/definitions.json`) loaded
    the way RabbitMQ loads it at boot; the import may finish after this returns."""
    if _api():
        _call("POST", "/definitions", document)
        return
    # The file world-readable: the CLI may run as the rabbitmq user.
    folder = Path(tempfile.mkdtemp(prefix="billing-definitions-"))
    try:
        folder.chmod(0o755)
        path = folder / "definitions.json"
        path.write_text(json.dumps(document))
        path.chmod(0o644)
        rabbitmqctl("import_definitions", str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
