"""Fallback for machines without local services: start them with testcontainers.

Used only when the configured PostgreSQL / RabbitMQ cannot be reached and a Docker
engine can; otherwise the integration tests skip with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("postgres:16.4-alpine", driver="asyncpg") as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def rabbitmq() -> Iterator[str]:
    from testcontainers.community.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13.7-management-alpine") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield f"amqp://guest:guest@{host}:{port}/"


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True
