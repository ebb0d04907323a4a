"""The persister group's batch handler: insert, commit, then let the consumer acknowledge."""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
import structlog

from services.persister.store import insert_events
from shared.metrics import POSTGRES_INSERT_DURATION, POSTGRES_ROWS_INSERTED
from shared.stream import Entry

log = structlog.get_logger(__name__)


class Persister:
    """Write each batch to PostgreSQL before the consumer acknowledges it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.events_inserted = 0

    async def handle(self, entries: Sequence[Entry]) -> None:
        async with self.pool.acquire() as connection:
            started_s = time.perf_counter()
            inserted = await insert_events(connection, entries)
            POSTGRES_INSERT_DURATION.observe(time.perf_counter() - started_s)
        POSTGRES_ROWS_INSERTED.inc(inserted)
        self.events_inserted += inserted
        log.debug("batch stored", entries=len(entries), inserted=inserted, first_id=entries[0].stream_id)
