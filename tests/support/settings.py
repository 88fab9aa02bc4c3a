"""Worker settings for tests: fast retries and polling, no .env file."""

from __future__ import annotations

from typing import Any

from billing_worker.settings import Settings


def make_settings(database_url: str, rabbitmq_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "rabbitmq_url": rabbitmq_url,
        "retry_delays_ms": (50, 100, 200),
        "outbox_poll_interval_ms": 200,
        "log_format": "text",
        "sandbox_enabled": True,  # tests drive most payments through the sandbox
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
