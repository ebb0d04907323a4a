"""An in-process pipeline for board tests: ingest over HTTP, then ranker and persister steps on demand.

Stream entries are handed to the real Ranker handler and the persister's insert
directly, with no consumer groups, so a test decides exactly when events are
applied and what "now" is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp.test_utils import TestClient, TestServer

from services.ingest.app import create_app
from services.persister.store import insert_events
from services.ranker.ranker import Ranker
from shared.api_keys import KeyKind
from shared.board_store import BoardStore, apply_boards
from shared.boards import Board
from shared.clock import ManualClock
from shared.database import create_pool
from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.schema import stream_event_decoder
from shared.settings import Settings
from shared.stream import EVENT_FIELD, Entry, ensure_group
from tests.helpers import new_key


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Pipeline:
    settings: Settings
    client: redis.Redis
    pool: asyncpg.Pool
    store: BoardStore
    http: TestClient
    ranker: Ranker
    clock: ManualClock
    key: str
    admin_key: str
    counter: int = 0

    @property
    def names(self) -> Names:
        return Names(self.settings.namespace)

    async def post(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post events and return their results."""
        response = await self.http.post("/v1/events", json=list(events), headers={"Authorization": f"Bearer {self.key}"})
        body = await response.json()
        assert response.status in (200, 202), body
        return body["results"]

    def event(self, user: str, value: float, occurred_at: str, metric: str = "m", **extra: Any) -> dict[str, Any]:
        """Build a score event with a fresh id."""
        self.counter += 1
        return {"event_id": f"e{self.counter}", "user_id": user, "metric": metric, "value": value, "occurred_at": occurred_at, **extra}

    async def process(self) -> list[Entry]:
        """Apply and persist every entry appended since the last call, as the two groups would; return them."""
        stream = self.names.events_stream
        applied: list[Entry] = []
        for group in (RANKER_GROUP, PERSISTER_GROUP):
            await ensure_group(self.client, stream, group)
            reply = await self.client.xreadgroup(group, "test", {stream: ">"}, count=10_000)
            raw = reply[0][1] if reply else []
            entries = [Entry(entry_id.decode(), stream_event_decoder.decode(fields[EVENT_FIELD])) for entry_id, fields in raw]
            if not entries:
                continue
            if group == RANKER_GROUP:
                await self.ranker.handle(entries)
                applied = entries
            else:
                async with self.pool.acquire() as connection:
                    await insert_events(connection, entries)
            await self.client.xack(stream, group, *[entry.stream_id for entry in entries])
        return applied

    async def post_and_process(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        results = await self.post(events)
        await self.process()
        return results

    async def get(self, path: str, expected_status: int = 200, **params: Any) -> dict[str, Any]:
        response = await self.http.get(path, params={k: str(v) for k, v in params.items()})
        body = await response.json()
        assert response.status == expected_status, body
        return body

    async def scores(self, board: str, period: str | None = None, group: str | None = None) -> list[tuple[int, str, float]]:
        """Return (rank, user, score) of every entry of a board period via the read API."""
        params: dict[str, Any] = {"limit": 1000}
        if period is not None:
            params["period"] = period
        prefix = f"/v1/boards/{board}" if group is None else f"/v1/boards/{board}/groups/{group}"
        body = await self.get(f"{prefix}/top", **params)
        return [(entry["rank"], entry["user_id"], entry["score"]) for entry in body["entries"]]


@asynccontextmanager
async def board_pipeline(settings: Settings, boards: Sequence[Board], now: datetime) -> AsyncIterator[Pipeline]:
    """Store ``boards`` in PostgreSQL and serve ingest with a ManualClock at ``now``."""
    # The anti-cheat skew rule is set wide so the 5-minute future limit of the board checks is what tests see.
    settings = replace(settings, max_clock_skew_s=3600)
    client = redis.Redis.from_url(settings.redis_url)
    pool = await create_pool(settings.database_url, max_size=4)
    async with pool.acquire() as connection:
        await apply_boards(connection, list(boards))
    store = BoardStore(pool)
    registry = await store.open()
    clock = ManualClock(now)
    app = create_app(settings, client, pool, registry, clock=clock)
    key = await new_key(settings)
    admin_key = await new_key(settings, KeyKind.ADMIN)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as http:
            yield Pipeline(settings, client, pool, store, http, Ranker(client, Names(settings.namespace), registry), clock, key, admin_key)
    finally:
        await pool.close()
        await client.aclose()
