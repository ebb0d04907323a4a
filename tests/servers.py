"""Real Redis/Valkey and PostgreSQL servers for the test session.

In order of preference: the servers named by ``RANKSTREAM_TEST_REDIS_URL`` and
``RANKSTREAM_TEST_DATABASE_URL``; testcontainers images when
``RANKSTREAM_TEST_DOCKER=1``; otherwise embedded servers on free ports with
data in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.embedded import EmbeddedPostgres, EmbeddedValkey


@dataclass
class TestServers:
    redis_url: str
    database_url: str
    valkey: EmbeddedValkey | None = None
    postgres: EmbeddedPostgres | None = None


@contextlib.contextmanager
def _docker_servers() -> Iterator[TestServers]:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    with RedisContainer("valkey/valkey:8.1") as redis_container, PostgresContainer("postgres:16", driver=None) as postgres_container:
        host = redis_container.get_container_host_ip()
        port = redis_container.get_exposed_port(6379)
        yield TestServers(redis_url=f"redis://{host}:{port}/0", database_url=postgres_container.get_connection_url())


@contextlib.contextmanager
def test_servers(base_dir: Path) -> Iterator[TestServers]:
    """Yield servers for the whole test session and stop those it started."""
    redis_url = os.environ.get("RANKSTREAM_TEST_REDIS_URL")
    database_url = os.environ.get("RANKSTREAM_TEST_DATABASE_URL")
    if redis_url and database_url:
        yield TestServers(redis_url=redis_url, database_url=database_url)
        return
    if os.environ.get("RANKSTREAM_TEST_DOCKER") == "1":
        with _docker_servers() as servers:
            yield servers
        return
    valkey = EmbeddedValkey(base_dir / "valkey")
    postgres = EmbeddedPostgres(base_dir / "postgres", durable=False)
    try:
        valkey.start()
        postgres.start()
        yield TestServers(redis_url=valkey.url, database_url=postgres.url, valkey=valkey, postgres=postgres)
    finally:
        postgres.stop()
        valkey.stop()
