"""The persister group's batch handler: insert, commit, then let the consumer acknowledge."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import asyncpg
import structlog

from services.persister.store import insert_events
from shared.metrics import POSTGRES_INSERT_DURATION, POSTGRES_ROWS_INSERTED
from shared.stream import DependencyUnavailable, Entry

log = structlog.get_logger(__name__)

# Errors meaning PostgreSQL is down, restarting or unreachable: the batch waits
# for it. TimeoutError (an OSError) covers a connection attempt that timed out.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)


class Persister:
    """Write each batch to PostgreSQL before the consumer acknowledges it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.events_inserted = 0

    async def handle(self, entries: Sequence[Entry]) -> Mapping[str, str]:
        """Store a batch; return the entries the database rejected, by stream id, with its error.

        Raises DependencyUnavailable when PostgreSQL cannot be reached, so the
        consumer retries the batch with backoff and keeps it pending meanwhile.
        """
        try:
            async with self.pool.acquire() as connection:
                started_s = time.perf_counter()
                result = await insert_events(connection, entries)
                POSTGRES_INSERT_DURATION.observe(time.perf_counter() - started_s)
        except DATABASE_UNAVAILABLE as error:
            raise DependencyUnavailable(f"PostgreSQL unavailable: {type(error).__name__}: {error}") from error
        POSTGRES_ROWS_INSERTED.inc(result.inserted)
        self.events_inserted += result.inserted
        log.debug("batch stored", entries=len(entries), inserted=result.inserted, rejected=len(result.rejected), first_id=entries[0].stream_id)
        return result.rejected
