"""The benchmark's raw Valkey limits send commands the server accepts and leave the measured board unchanged."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import redis.asyncio as redis

from bench import limits
from bench.common import BOARD
from shared.names import Names
from shared.settings import Settings


async def test_raw_limits_run_without_errors(settings: Settings, redis_client: redis.Redis) -> None:
    board = f"{settings.namespace}:board"
    await redis_client.zadd(board, {f"u{number}": number % 7 for number in range(1000)})
    port = urlsplit(settings.redis_url).port
    try:
        found = await asyncio.to_thread(limits.raw_valkey, port, events=250, reads=10, athletes=1000, scores_key=board, names_key=f"{settings.namespace}:names")
        stream = Names(limits.LIMIT_NAMESPACE).events_stream
        groups = {group["name"].decode(): group for group in await redis_client.xinfo_groups(stream)}
        copy = await redis_client.zcard(Names(limits.LIMIT_NAMESPACE).board_scores(BOARD, "limit"))
    finally:
        async for key in redis_client.scan_iter(match=f"{limits.LIMIT_NAMESPACE}:*", count=1000):
            await redis_client.unlink(key)

    for name in ("ingest", "consumer_groups", "ranker", "rebuild", "top_100", "rank_with_neighbours"):
        assert found[name]["errors"] == 0, name
        assert found[name]["replies"] == found[name]["commands"], name
    # Three ranker batches (100, 100, 50 events): three batch commands each plus three per event.
    assert found["ranker"]["commands"] == 3 * 3 + 3 * 250
    # Both groups read and acknowledged every entry the ingest commands added.
    assert {name: (group["pending"], group["entries-read"]) for name, group in groups.items()} == {"ranker": (0, 250), "persister": (0, 250)}
    every_s = found["ingest"]["seconds"] + found["consumer_groups"]["seconds"] + found["ranker"]["seconds"]
    assert found["ingest_consumers_and_ranker"]["events_per_s"] == round(250 / every_s, 1)
    # The ranker's commands ran on a copy, so the board the reads measure kept its scores.
    assert copy == 1000
    assert await redis_client.zscore(board, "u999") == 999 % 7
