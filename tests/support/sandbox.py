"""The sandbox's callback key, for tests that deliver sandbox callbacks themselves.

Only the worker's database holds the key; a test that plays the sandbox reads it there,
as the worker does at start-up.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url

from billing_contracts import names
from billing_worker.providers.sandbox import SECRET_NAME, SandboxGateway


async def sandbox_key(database_url: str) -> bytes:
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        secret = await connection.fetchval(
            "SELECT secret FROM service_secrets WHERE name = $1", SECRET_NAME
        )
    finally:
        await connection.close()
    assert secret, "the test database is not migrated"
    return str(secret).encode()


def signed(gateway: SandboxGateway, body: bytes, provider: str = "sandbox") -> dict[str, str]:
    """The headers of a genuine sandbox callback carrying `body`."""
    return {
        names.PROVIDER_HEADER: provider,
        names.SANDBOX_SIGNATURE_HEADER: gateway.signature(body),
    }
