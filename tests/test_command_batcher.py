"""The command batcher: concurrent script calls share one round trip, and each gets its own reply."""

from __future__ import annotations

import asyncio

import pytest

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from shared.command_batcher import CommandBatcher
from shared.embedded import free_port
from shared.settings import Settings

# Appends ARGV[1] to the list KEYS[1] and returns the new length, or fails on "bad".
PUSH = """
if ARGV[1] == 'bad' then
  return redis.error_reply('bad value')
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


async def test_concurrent_calls_share_one_pipeline(settings: Settings, redis_client) -> None:
    """Ten calls made together go out as one pipeline, run in call order, and each gets its own reply."""
    batcher = CommandBatcher(redis_client)
    script = redis_client.register_script(PUSH)
    key = f"{settings.namespace}:batched"

    replies = await asyncio.gather(*(batcher.call(script, [key], [f"v{i}"]) for i in range(10)))

    assert [reply.value for reply in replies] == list(range(1, 11))
    assert [reply.on_disk for reply in replies] == [None] * 10
    assert await redis_client.lrange(key, 0, -1) == [f"v{i}".encode() for i in range(10)]
    assert batcher.pipelines_sent == 1
    assert batcher.calls_sent == 10


async def test_calls_during_flight_form_next_pipeline(settings: Settings, redis_client) -> None:
    """A call made while a pipeline is in flight waits for it, then goes out with the others made meanwhile."""
    batcher = CommandBatcher(redis_client)
    script = redis_client.register_script(PUSH)
    key = f"{settings.namespace}:batched"

    first = asyncio.ensure_future(batcher.call(script, [key], ["a"]))
    await asyncio.sleep(0)  # the sender task starts and writes the first pipeline
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batcher.call(script, [key], [value])) for value in ("b", "c")]
    replies = await asyncio.gather(first, *later)

    assert [reply.value for reply in replies] == [1, 2, 3]
    assert batcher.pipelines_sent == 2
    assert batcher.calls_sent == 3


async def test_error_reply_stays_with_its_call(settings: Settings, redis_client) -> None:
    """A script error is the reply of its own call only, and the calls around it run."""
    batcher = CommandBatcher(redis_client)
    script = redis_client.register_script(PUSH)
    key = f"{settings.namespace}:batched"

    replies = await asyncio.gather(*(batcher.call(script, [key], [value]) for value in ("a", "bad", "c")))

    assert replies[0].value == 1
    assert isinstance(replies[1].value, ResponseError)
    assert str(replies[1].value) == "bad value"
    assert replies[2].value == 2
    assert await redis_client.lrange(key, 0, -1) == [b"a", b"c"]


async def test_flushed_script_cache_runs_each_call_once(settings: Settings, redis_client) -> None:
    """After SCRIPT FLUSH the batcher loads the script and sends the calls again, and each runs exactly once."""
    batcher = CommandBatcher(redis_client)
    script = redis_client.register_script(PUSH)
    key = f"{settings.namespace}:batched"
    await redis_client.script_flush()

    replies = await asyncio.gather(*(batcher.call(script, [key], [f"v{i}"]) for i in range(3)))

    assert [reply.value for reply in replies] == [1, 2, 3]
    assert await redis_client.lrange(key, 0, -1) == [b"v0", b"v1", b"v2"]


async def test_wait_aof_confirms_every_call(settings: Settings, redis_client) -> None:
    """With a wait for the append-only file, each call of the pipeline learns that one file confirmed it."""
    batcher = CommandBatcher(redis_client, wait_aof_timeout_ms=5_000)
    script = redis_client.register_script(PUSH)
    key = f"{settings.namespace}:batched"

    replies = await asyncio.gather(*(batcher.call(script, [key], [f"v{i}"]) for i in range(4)))

    assert [reply.value for reply in replies] == [1, 2, 3, 4]
    assert [reply.on_disk for reply in replies] == [1, 1, 1, 1]
    assert batcher.pipelines_sent == 1


async def test_lost_connection_fails_every_call(settings: Settings) -> None:
    """When the server cannot be reached, every call of the pipeline raises the connection error."""
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    batcher = CommandBatcher(client)
    script = client.register_script(PUSH)
    try:
        results = await asyncio.gather(*(batcher.call(script, ["k"], ["v"]) for _ in range(3)), return_exceptions=True)
    finally:
        await client.aclose()

    assert [type(result) for result in results] == [RedisConnectionError] * 3
    assert batcher.pipelines_sent == 0



class ReplyDroppingProxy:
    """A TCP proxy to Redis that closes the first connection carrying EVALSHA once the server replies, without passing the reply on."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.dropped = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        sent_script = asyncio.Event()

        async def forward_requests() -> None:
            while data := await reader.read(65536):
                if b"EVALSHA" in data:
                    sent_script.set()
                upstream_writer.write(data)
                await upstream_writer.drain()

        async def forward_replies() -> None:
            while data := await upstream_reader.read(65536):
                if sent_script.is_set() and self.dropped == 0:
                    self.dropped += 1
                    break
                writer.write(data)
                await writer.drain()

        tasks = {asyncio.ensure_future(forward_requests()), asyncio.ensure_future(forward_replies())}
        self._tasks |= tasks
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            upstream_writer.close()


async def test_lost_reply_pipeline_not_resent(settings: Settings, redis_client) -> None:
    """A pipeline whose replies were lost may have run, so every call raises instead of being sent again."""
    address = redis_client.connection_pool.connection_kwargs
    proxy = ReplyDroppingProxy(address["host"], address["port"])
    port = await proxy.start()
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 3))
    batcher = CommandBatcher(client)
    script = client.register_script(PUSH)
    key = f"{settings.namespace}:batched"
    await redis_client.script_load(PUSH)
    try:
        results = await asyncio.gather(*(batcher.call(script, [key], [value]) for value in ("a", "b")), return_exceptions=True)
    finally:
        await client.aclose()
        await proxy.close()

    assert proxy.dropped == 1
    assert [type(result) for result in results] == [RedisConnectionError] * 2
    assert await redis_client.lrange(key, 0, -1) == [b"a", b"b"]


# Appends ARGV[1] to KEYS[1] after an empty loop of ARGV[2] turns, which keeps
# the server busy for a few milliseconds. A loop on TIME would not end, because
# the clock does not advance within a script.
SLOW_PUSH = """
for _ = 1, tonumber(ARGV[2]) do end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


async def test_second_pipeline_sent_during_first(settings: Settings, redis_client) -> None:
    """With two in flight, a call made during the first pipeline goes out at once. Later calls share a third."""
    batcher = CommandBatcher(redis_client, max_in_flight=2)
    script = redis_client.register_script(SLOW_PUSH)
    await redis_client.script_load(SLOW_PUSH)  # so no call takes the reload path, which sends it again
    key = f"{settings.namespace}:batched"

    first = asyncio.ensure_future(batcher.call(script, [key], ["a", 3_000_000]))
    await asyncio.sleep(0)  # the first sender starts with "a"
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.call(script, [key], ["b", 0]))
    await asyncio.sleep(0)  # the second sender starts with "b" while "a" still runs
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batcher.call(script, [key], [value, 0])) for value in ("c", "d")]
    replies = await asyncio.gather(first, second, *later)

    # Pipelines on two connections may run in either order, so only "a" has a known place.
    assert replies[0].value == 1
    assert sorted(reply.value for reply in replies[1:]) == [2, 3, 4]
    assert sorted(await redis_client.lrange(key, 0, -1)) == [b"a", b"b", b"c", b"d"]
    assert batcher.pipelines_sent == 3
    assert batcher.calls_sent == 4


def test_in_flight_below_one_rejected(redis_client) -> None:
    """A batcher needs at least one pipeline in flight."""
    with pytest.raises(ValueError, match="max_in_flight must be at least 1, not 0"):
        CommandBatcher(redis_client, max_in_flight=0)


async def test_slow_replies_drop_connection(settings: Settings, redis_client) -> None:
    """Replies later than the socket timeout raise a Redis timeout, and the next call gets a fresh connection."""
    client = redis.Redis(host="127.0.0.1", port=redis_client.connection_pool.connection_kwargs["port"], socket_timeout=0.05)
    batcher = CommandBatcher(client)
    script = client.register_script(SLOW_PUSH)
    key = f"{settings.namespace}:batched"
    try:
        await client.script_load(SLOW_PUSH)
        with pytest.raises(RedisTimeoutError, match="timed out after 0.05 s reading 1 replies from Redis"):
            await batcher.call(script, [key], ["slow", 20_000_000])
        await redis_client.ping()  # waits until the slow script has ended
        after = await batcher.call(script, [key], ["next", 0])
    finally:
        await client.aclose()

    assert after.value == 2
    assert await redis_client.lrange(key, 0, -1) == [b"slow", b"next"]
