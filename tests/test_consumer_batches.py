"""The consumer loop and the ranker's batch handling on a real Valkey: lost groups and a bad entry in a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest
import redis.asyncio as redis

from services.ranker.ranker import Ranker
from services.ranker.script import pack_events
from shared.boards import Board, BoardRegistry, Operator
from shared.dead_letters import list_dead_letters
from shared.names import RANKER_GROUP, Names
from shared.schema import StreamEvent
from shared.settings import Settings
from shared.standings import read_top
from shared.stream import Entry, HandlerResult, StreamConsumer, encode_entry
from tests.helpers import wait_for

WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def event(event_id: str, user: str, value: int) -> StreamEvent:
    return StreamEvent(event_id=event_id, user_id=user, metric="m", value=value, occurred_at=WHEN, received_at=WHEN)


def test_pack_events_ends_each_field() -> None:
    """The events argument ends every field with 0x1F, and an empty list packs to an empty string."""
    assert pack_events(["e1", "a", "300", "0001796000000000"]) == "e1\x1fa\x1f300\x1f0001796000000000\x1f"
    assert pack_events([]) == ""


def test_pack_events_rejects_separator_in_id() -> None:
    """An id containing 0x1F raises instead of shifting every later field."""
    with pytest.raises(ValueError, match="contains the byte 0x1F") as raised:
        pack_events(["e\x1f1", "a", "300", "0001796000000000"])
    assert str(raised.value) == "event field 'e\\x1f1' contains the byte 0x1F, which no valid event id or user id contains"


async def test_group_created_again_after_stream_deleted(settings: Settings, redis_client: redis.Redis) -> None:
    """A consumer whose stream and group were deleted creates the group again and handles new entries."""
    names = Names(settings.namespace)
    handled: list[str] = []

    async def handler(entries: Sequence[Entry]) -> None:
        handled.extend(entry.event.event_id for entry in entries)

    consumer = StreamConsumer(redis_client, names, RANKER_GROUP, "c1", handler, block_ms=20, claim_interval_s=60, trim_interval_s=0)
    running = asyncio.create_task(consumer.run())
    try:
        await redis_client.xadd(names.events_stream, encode_entry(event("before", "a", 1)))

        async def first_handled() -> bool:
            return handled == ["before"]

        await wait_for(first_handled, what="the first entry handled")
        await redis_client.delete(names.events_stream)
        await redis_client.xadd(names.events_stream, encode_entry(event("after", "a", 2)))

        async def second_handled() -> bool:
            return handled == ["before", "after"]

        await wait_for(second_handled, what="the entry added after the stream was deleted")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=15)
    assert (await redis_client.xpending(names.events_stream, RANKER_GROUP))["pending"] == 0


async def test_bad_entry_fails_alone_in_batch(settings: Settings, redis_client: redis.Redis) -> None:
    """In one batch, an entry the apply step cannot take stays pending with its error and the good entries count."""
    names = Names(settings.namespace)
    board = Board(id="mixed", metric="m", operator=Operator.SUM)
    ranker = Ranker(redis_client, names, BoardRegistry([board]))
    # Appended before the consumer starts, so one read returns all three as one batch.
    await redis_client.xgroup_create(names.events_stream, RANKER_GROUP, id="0", mkstream=True)
    await redis_client.xadd(names.events_stream, encode_entry(event("g1", "a", 10)))
    bad = (await redis_client.xadd(names.events_stream, encode_entry(event("bad", "b\x1fx", 20)))).decode()
    await redis_client.xadd(names.events_stream, encode_entry(event("g2", "c", 30)))

    consumer = StreamConsumer(redis_client, names, RANKER_GROUP, "c1", ranker.handle, block_ms=20, claim_interval_s=60, trim_interval_s=0)
    running = asyncio.create_task(consumer.run())
    try:

        async def error_recorded() -> bool:
            return await redis_client.hexists(names.failed_entries(RANKER_GROUP), bad)

        await wait_for(error_recorded, what="the bad entry's error")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=15)

    top = await read_top(redis_client, names, board, "all", 10)
    assert [(s.rank, s.user_id, s.score) for s in top] == [(1, "c", 30), (2, "a", 10)]
    pending = await redis_client.xpending_range(names.events_stream, RANKER_GROUP, min="-", max="+", count=10)
    assert [item["message_id"].decode() for item in pending] == [bad]
    error = await redis_client.hget(names.failed_entries(RANKER_GROUP), bad)
    assert error == b"ValueError: event field 'b\\x1fx' contains the byte 0x1F, which no valid event id or user id contains"
    assert await redis_client.hlen(names.failed_entries(RANKER_GROUP)) == 1


async def test_publish_sent_with_acknowledgement(settings: Settings, redis_client: redis.Redis) -> None:
    """A handler's messages are published when its batch is acknowledged, also with a rejected entry in it."""
    names = Names(settings.namespace)
    channel = f"{settings.namespace}:test-channel"
    await redis_client.xgroup_create(names.events_stream, RANKER_GROUP, id="0", mkstream=True)
    await redis_client.xadd(names.events_stream, encode_entry(event("good", "a", 1)))
    rejected = (await redis_client.xadd(names.events_stream, encode_entry(event("rejected", "b", 2)))).decode()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)

    async def handler(entries: Sequence[Entry]) -> HandlerResult:
        ids = ",".join(entry.event.event_id for entry in entries)
        return HandlerResult(rejected={rejected: "not wanted"}, publish=[(channel, ids.encode())])

    consumer = StreamConsumer(redis_client, names, RANKER_GROUP, "c1", handler, block_ms=20, claim_interval_s=60, trim_interval_s=0)
    running = asyncio.create_task(consumer.run())
    try:
        message = None
        for _ in range(50):
            message = await pubsub.get_message(timeout=0.1)
            if message is not None:
                break
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=15)
        await pubsub.aclose()

    assert message is not None
    assert message["data"] == b"good,rejected"
    assert (await redis_client.xpending(names.events_stream, RANKER_GROUP))["pending"] == 0
    letters = await list_dead_letters(redis_client, names, count=10)
    assert [(letter.source_id, letter.event_id, letter.error) for letter in letters] == [(rejected, "rejected", "not wanted")]
