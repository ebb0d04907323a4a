"""Dead letters without a recorded error, and replays that cannot be done."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as redis

from shared.dead_letters import list_dead_letters, replay_dead_letters
from shared.names import PERSISTER_GROUP, Names
from shared.schema import StreamEvent
from shared.settings import Settings
from shared.stream import Entry, StreamConsumer, encode_entry
from tests.faults.support import occurred_now
from tests.helpers import wait_for


async def test_entry_that_kills_consumers_dead_lettered(settings: Settings, redis_client: redis.Redis) -> None:
    """An entry delivered more than max_deliveries times without a recorded error is dead-lettered, not handled again."""
    names = Names(settings.namespace)
    stream = names.events_stream
    now = occurred_now()
    event = StreamEvent(event_id="crasher", user_id="athlete-1", metric="pushups", value=1, occurred_at=now, received_at=now)
    await redis_client.xgroup_create(stream, PERSISTER_GROUP, id="0", mkstream=True)
    entry_id = (await redis_client.xadd(stream, encode_entry(event))).decode()

    # Five consumers each took the entry and died before recording anything, as a crash on it would leave it.
    await redis_client.xreadgroup(PERSISTER_GROUP, "dead-1", {stream: ">"})
    for number in range(2, 6):
        await redis_client.xclaim(stream, PERSISTER_GROUP, f"dead-{number}", 0, [entry_id])

    handled: list[str] = []

    async def handler(entries: Sequence[Entry]) -> None:
        handled.extend(entry.stream_id for entry in entries)

    consumer = StreamConsumer(
        redis_client, names, PERSISTER_GROUP, "survivor", handler,
        block_ms=50, claim_idle_ms=0, claim_interval_s=0.1, max_deliveries=5, trim_interval_s=0,
    )
    running = asyncio.create_task(consumer.run())
    try:

        async def dead_lettered() -> bool:
            return await redis_client.xlen(names.dead_letter_stream) == 1

        await wait_for(dead_lettered, what="the entry in the dead-letter stream")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=15)

    letters = await list_dead_letters(redis_client, names, count=10)
    assert handled == []
    assert len(letters) == 1
    assert letters[0].source_id == entry_id
    assert letters[0].event_id == "crasher"
    assert letters[0].deliveries == 6
    assert letters[0].error == "delivered 6 times without success"
    assert (await redis_client.xpending(stream, PERSISTER_GROUP))["pending"] == 0


async def test_replay_reports_what_it_cannot_do(settings: Settings, redis_client: redis.Redis) -> None:
    """Replay leaves alone an unknown id and a dead letter without payload, and reports why."""
    names = Names(settings.namespace)
    empty_id = (
        await redis_client.xadd(
            names.dead_letter_stream,
            {b"source_id": b"1-1", b"group": b"ranker", b"event": b"", b"error": b"entry deleted from the stream while pending", b"deliveries": b"2"},
        )
    ).decode()

    replays = await replay_dead_letters(redis_client, names, ["1-0", empty_id])

    assert [replay.new_stream_id for replay in replays] == [None, None]
    assert replays[0].reason == "not found in the dead-letter stream"
    assert replays[1].reason == "the entry was deleted from the events stream before it failed; nothing to replay"
    assert await redis_client.xlen(names.dead_letter_stream) == 1
    assert await redis_client.xlen(names.events_stream) == 0


async def test_dlq_command_needs_only_redis(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """``rankstream dlq`` works with a Redis URL alone and exits 1 when a replay cannot be done."""
    names = Names(settings.namespace)
    letter_id = (
        await redis_client.xadd(
            names.dead_letter_stream,
            {b"source_id": b"1-1", b"group": b"ranker", b"event": b"", b"error": b"entry deleted from the stream while pending", b"deliveries": b"2"},
        )
    ).decode()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RANKSTREAM_")}
    env.update(RANKSTREAM_REDIS_URL=settings.redis_url, RANKSTREAM_NAMESPACE=settings.namespace, RANKSTREAM_DATA_DIR=str(tmp_path))

    def rankstream(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services", *args], env=env, capture_output=True, text=True, timeout=60)

    listed = rankstream("dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (
        f"{letter_id}\tgroup=ranker\tsource_id=1-1\tevent_id=-\tdeliveries=2\terror=entry deleted from the stream while pending\n"
    )

    replayed = rankstream("dlq", "replay", letter_id)
    assert replayed.returncode == 1
    assert f"{letter_id}: not replayed: the entry was deleted from the events stream before it failed; nothing to replay" in replayed.stderr
    assert replayed.stdout == "replayed 0 of 1 dead letters\n"
