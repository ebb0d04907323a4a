"""Shared fixtures: one set of real servers per session, a fresh namespace and database per test."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis

from shared.database import migrate_url
from shared.logs import configure_logging
from shared.redis_client import connect_redis
from shared.settings import Settings
from tests.servers import TestServers, test_servers

ROOT = Path(__file__).resolve().parent.parent
BOARDS_FILE = ROOT / "deploy" / "boards.toml"

configure_logging("warning", "console")


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    base = Path(tempfile.mkdtemp(prefix="rankstream-test-"))
    with test_servers(base) as found:
        yield found


def _database_url(base_url: str, database: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
async def settings(servers: TestServers, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: its own key namespace, its own migrated database, free ports."""
    from shared.embedded import free_port

    suffix = secrets.token_hex(4)
    database = f"test_{suffix}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    database_url = _database_url(servers.database_url, database)
    await migrate_url(database_url)
    yield Settings(
        redis_url=servers.redis_url,
        database_url=database_url,
        namespace=f"t{suffix}",
        http_port=free_port(),
        ws_port=free_port(),
        data_dir=tmp_path / "data",
        boards_file=BOARDS_FILE,
        block_ms=50,
        persist_max_wait_ms=20,
    )
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = connect_redis(settings.redis_url)
    yield client
    # Remove this test's keys so the shared server stays small.
    async for key in client.scan_iter(match=f"{settings.namespace}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.database_url)
    yield connection
    await connection.close()


def service_env(settings: Settings) -> dict[str, str]:
    """Environment for a service subprocess that uses this test's servers and names."""
    return {
        **os.environ,
        "RANKSTREAM_REDIS_URL": settings.redis_url,
        "RANKSTREAM_DATABASE_URL": settings.database_url,
        "RANKSTREAM_NAMESPACE": settings.namespace,
        "RANKSTREAM_HTTP_PORT": str(settings.http_port),
        "RANKSTREAM_WS_PORT": str(settings.ws_port),
        "RANKSTREAM_DATA_DIR": str(settings.data_dir),
        "RANKSTREAM_BOARDS_FILE": str(settings.boards_file),
        "RANKSTREAM_BLOCK_MS": "50",
        "RANKSTREAM_PERSIST_MAX_WAIT_MS": "20",
        "RANKSTREAM_LOG_FORMAT": "json",
    }


def with_boards(settings: Settings, path: Path) -> Settings:
    return replace(settings, boards_file=path)
