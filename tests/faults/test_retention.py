"""Trimming the events stream: only entries every group acknowledged, and nothing while a group is missing."""

from __future__ import annotations

import redis.asyncio as redis

from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.retention import StreamTrimmer
from shared.settings import Settings


async def _append(client: redis.Redis, stream: str, count: int) -> list[str]:
    return [(await client.xadd(stream, {b"event": b"{}"})).decode() for _ in range(count)]


async def _read(client: redis.Redis, stream: str, group: str, count: int) -> list[str]:
    reply = await client.xreadgroup(group, f"{group}-1", {stream: ">"}, count=count)
    return [entry_id.decode() for entry_id, _fields in reply[0][1]]


async def test_trim_keeps_unacknowledged_entries(settings: Settings, redis_client: redis.Redis) -> None:
    """The trim stops at the oldest entry any group still needs: pending or not yet delivered."""
    stream = Names(settings.namespace).events_stream
    ids = await _append(redis_client, stream, 10)
    trimmer = StreamTrimmer(redis_client, stream, (RANKER_GROUP, PERSISTER_GROUP))

    await redis_client.xgroup_create(stream, RANKER_GROUP, id="0")
    assert await trimmer.trim_acknowledged() == 0
    assert await redis_client.xlen(stream) == 10

    await redis_client.xgroup_create(stream, PERSISTER_GROUP, id="0")
    # The ranker acknowledged all ten; the persister read six and acknowledged the first four.
    await redis_client.xack(stream, RANKER_GROUP, *await _read(redis_client, stream, RANKER_GROUP, 10))
    persister_read = await _read(redis_client, stream, PERSISTER_GROUP, 6)
    await redis_client.xack(stream, PERSISTER_GROUP, *persister_read[:4])

    assert await trimmer.trim_acknowledged() == 4
    remaining = [entry_id.decode() for entry_id, _fields in await redis_client.xrange(stream)]
    assert remaining == ids[4:]

    # Acknowledging the two pending entries frees them; the four never delivered stay.
    await redis_client.xack(stream, PERSISTER_GROUP, *persister_read[4:])
    assert await trimmer.trim_acknowledged() == 2
    remaining = [entry_id.decode() for entry_id, _fields in await redis_client.xrange(stream)]
    assert remaining == ids[6:]

    # With everything acknowledged by both groups, the stream empties.
    await redis_client.xack(stream, RANKER_GROUP, *ids)
    await redis_client.xack(stream, PERSISTER_GROUP, *await _read(redis_client, stream, PERSISTER_GROUP, 10))
    assert await trimmer.trim_acknowledged() == 4
    assert await redis_client.xlen(stream) == 0
