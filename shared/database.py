"""PostgreSQL connection pools and schema migrations.

Migrations are the numbered ``.sql`` files in ``shared/migrations``. Each runs
once, in order, inside a transaction; an advisory lock keeps two processes from
migrating at the same time.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any fixed number works; it only has to be the same in every process.
_MIGRATION_LOCK_ID = 7_246_551_001
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections time out commands after 30 s."""
    return await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, command_timeout=30, timeout=10
    )


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; return the versions applied now."""
    applied_now: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            await connection.execute(sql)
            await connection.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(version)
            log.info("migration applied", version=version, name=name)
    return applied_now


async def migrate_url(database_url: str) -> list[int]:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        return await migrate(connection)
    finally:
        await connection.close(timeout=5)
