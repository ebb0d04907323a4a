"""Redis commands sent as one pipeline on one connection, their replies returned as Redis sent them.

redis-py's Pipeline does work per command (argument encoding in Python,
response callbacks, a timer per reply, bookkeeping) that showed in the
profiles of ingest and of the read API. Here hiredis packs the commands in C,
they are written at once, and the replies are read under one deadline and
returned unparsed: bytes, integers, lists and None, or the values RESP3 gives
when the client asked for it. The caller parses what it needs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


async def exchange(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Write every command at once, then read one reply per command. An error reply takes its place in the list."""
    await connection.send_packed_command(b"".join([hiredis.pack_command(command) for command in commands]), check_health=False)
    replies: list[Any] = []
    try:
        # One deadline for all the replies: redis-py's own per-read timeout
        # (math.inf turns it off) cost a timer per reply.
        async with asyncio.timeout(connection.socket_timeout):
            for _command in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
    except TimeoutError as error:
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(f"timed out after {connection.socket_timeout} s reading {len(commands)} replies from Redis") from error
    except BaseException:
        # Replies still unread would reach the next user of this connection.
        await connection.disconnect(nowait=True)
        raise
    return replies


async def read(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send read-only ``commands`` in one round trip and return their raw replies; raise the first error reply.

    A lost connection is retried under the client's retry policy, as redis-py
    does, which is safe because reading twice changes nothing.
    """
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.check_health()
        replies = await connection.retry.call_with_retry(lambda: exchange(connection, commands), lambda _error: connection.disconnect())
    finally:
        await pool.release(connection)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def score_pairs(reply: list[Any]) -> list[tuple[bytes, float]]:
    """Return (member, score) pairs from a WITHSCORES reply: flat in RESP2, one pair per entry in RESP3."""
    if reply and isinstance(reply[0], list):
        return [(member, float(score)) for member, score in reply]
    return [(reply[index], float(reply[index + 1])) for index in range(0, len(reply), 2)]
