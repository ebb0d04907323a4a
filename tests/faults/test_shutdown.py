"""SIGTERM with a batch in flight: the batch finishes and is acknowledged, or, past the bound, stays pending for later."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as redis

from shared.names import PERSISTER_GROUP, Names
from shared.settings import Settings
from tests.faults.support import (
    FAULT_ENV,
    SLOW_COMMIT_SQL,
    Poster,
    PostOutcome,
    group_backlog,
    occurred_now,
    pushups,
    report,
    stored_event_ids,
)
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes


async def _commit_running(db: asyncpg.Connection, database: str) -> bool:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep' AND query ILIKE 'COMMIT%'", database
    ) == 1


async def test_sigterm_finishes_batch_in_flight(settings: Settings, redis_client: redis.Redis, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A persister sent SIGTERM while its COMMIT runs finishes it, acknowledges, and exits 0 within 10 s."""
    names = Names(settings.namespace)
    database = urlsplit(settings.database_url).path.lstrip("/")
    await db.execute(SLOW_COMMIT_SQL)
    await db.execute("UPDATE commit_delay SET delay_s = 1.5")
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", **FAULT_ENV)
        services.start("persister", "persister", **FAULT_ENV)
        await wait_healthy(f"{base}/healthz")
        outcome = await Poster(base, key).post_batches([[pushups("in-flight", "slow-commit", 5, occurred_now())]], PostOutcome())
        await wait_for(lambda: _commit_running(db, database), what="the batch's COMMIT in progress")

        started_s = time.monotonic()
        code = services.stop("persister", timeout_s=15)
        stop_s = time.monotonic() - started_s
        stored = await stored_event_ids(settings.database_url)
        report("sigterm in flight", accepted=len(outcome.accepted), persisted=len(stored), stop_ms=int(stop_s * 1000))
        assert code == 0
        assert stop_s < 10
        assert stored == ["in-flight"]
        assert await group_backlog(redis_client, names, PERSISTER_GROUP) == (0, 0)


async def test_sigterm_past_bound_leaves_batch_pending(settings: Settings, redis_client: redis.Redis, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A batch still running at the stop bound is cancelled and stays pending; the next persister stores it once."""
    names = Names(settings.namespace)
    database = urlsplit(settings.database_url).path.lstrip("/")
    await db.execute(SLOW_COMMIT_SQL)
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    env = {**FAULT_ENV, "RANKSTREAM_STOP_TIMEOUT_S": "2"}

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", **env)
        services.start("persister-1", "persister", **env)
        await wait_healthy(f"{base}/healthz")
        outcome = await Poster(base, key).post_batches([[pushups("stuck", "slow-commit", 5, occurred_now())]], PostOutcome())
        await wait_for(lambda: _commit_running(db, database), what="the batch's COMMIT in progress")

        started_s = time.monotonic()
        code = services.stop("persister-1", timeout_s=15)
        stop_s = time.monotonic() - started_s
        assert code == 0
        assert 2 <= stop_s < 6
        assert "stop timed out, cancelling batch" in services.log_text("persister-1")
        assert await stored_event_ids(settings.database_url) == []
        assert await group_backlog(redis_client, names, PERSISTER_GROUP) == (1, 0)
        open_transactions = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'", database
        )
        assert open_transactions == 0

        await db.execute("UPDATE commit_delay SET delay_s = 0")
        services.start("persister-2", "persister", **env)

        async def stored_once() -> bool:
            return await group_backlog(redis_client, names, PERSISTER_GROUP) == (0, 0)

        await wait_for(stored_once, what="the pending batch stored by the next persister")
        stored = await stored_event_ids(settings.database_url)
        report("sigterm past bound", accepted=len(outcome.accepted), persisted=len(stored), stop_ms=int(stop_s * 1000))
        assert stored == ["stuck"]
        assert services.stop("persister-2") == 0
