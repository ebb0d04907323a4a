"""Raw pipelines: replies as Redis sends them, error replies raised, lost connections retried for reads."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from shared import raw_commands
from shared.redis_client import connect_redis
from shared.settings import Settings


def test_score_pairs_of_both_protocols() -> None:
    """A flat RESP2 reply and a RESP3 reply of pairs give the same (member, score) pairs."""
    assert raw_commands.score_pairs([b"a", b"3.5", b"b", b"1"]) == [(b"a", 3.5), (b"b", 1.0)]
    assert raw_commands.score_pairs([[b"a", 3.5], [b"b", 1.0]]) == [(b"a", 3.5), (b"b", 1.0)]
    assert raw_commands.score_pairs([]) == []


async def test_read_returns_raw_replies(settings: Settings, redis_client: redis.Redis) -> None:
    key = f"{settings.namespace}:raw:scores"
    await redis_client.zadd(key, {"a": 3.5, "b": 1})
    client = connect_redis(settings.redis_url)
    try:
        replies = await raw_commands.read(
            client, [("ZSCORE", key, "a"), ("ZCARD", key), ("HGET", f"{settings.namespace}:raw:none", "x"), ("ZREVRANGE", key, 0, -1, "WITHSCORES")]
        )
    finally:
        await client.aclose()
    resp2 = [b"3.5", 2, None, [b"a", b"3.5", b"b", b"1"]]
    resp3 = [3.5, 2, None, [[b"a", 3.5], [b"b", 1.0]]]
    assert replies in (resp2, resp3)


async def test_read_raises_error_reply(settings: Settings, redis_client: redis.Redis) -> None:
    key = f"{settings.namespace}:raw:text"
    await redis_client.set(key, "not a sorted set")
    client = connect_redis(settings.redis_url)
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await raw_commands.read(client, [("ZCARD", f"{settings.namespace}:raw:missing"), ("ZSCORE", key, "a")])
        # The connection goes back to the pool in a clean state.
        assert await raw_commands.read(client, [("ZCARD", f"{settings.namespace}:raw:missing")]) == [0]
    finally:
        await client.aclose()


async def test_read_retries_killed_connection(settings: Settings, redis_client: redis.Redis) -> None:
    """A read whose pooled connection the server closed reconnects and returns the reply."""
    client = connect_redis(settings.redis_url)
    try:
        (connection_id,) = await raw_commands.read(client, [("CLIENT", "ID")])
        assert await redis_client.client_kill_filter(_id=connection_id) == 1
        (next_id,) = await raw_commands.read(client, [("CLIENT", "ID")])
    finally:
        await client.aclose()
    assert next_id != connection_id
