"""Whether a consumer group has handled every stream entry up to a given id."""

from __future__ import annotations

import redis.asyncio as redis
from redis.exceptions import ResponseError

from shared.names import Names

STREAM_START = "0-0"


def parse_stream_id(stream_id: str | bytes) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


async def last_stream_id(client: redis.Redis, names: Names) -> str:
    """Return the id of the newest entry of the events stream, or ``0-0`` when it is empty."""
    newest = await client.xrevrange(names.events_stream, count=1)
    if not newest:
        return STREAM_START
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def group_passed(client: redis.Redis, names: Names, group: str, mark: str) -> bool:
    """Return whether ``group`` has read past ``mark`` and acknowledged every entry up to it.

    An empty ``mark`` (``0-0``) is always passed. A missing stream or group has
    passed nothing else.
    """
    target = parse_stream_id(mark)
    if target == (0, 0):
        return True
    try:
        groups = await client.xinfo_groups(names.events_stream)
    except ResponseError:
        return False
    info = next((entry for entry in groups if _text(entry["name"]) == group), None)
    if info is None or parse_stream_id(info["last-delivered-id"]) < target:
        return False
    pending = await client.xpending(names.events_stream, group)
    return pending["pending"] == 0 or parse_stream_id(pending["min"]) > target


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
