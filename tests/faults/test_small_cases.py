"""Small fault cases with known right results: a kill before the ack, a full backlog, a rejected row, a cancelled commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as redis

from services.persister.persister import Persister
from shared.consumer_cleanup import IdleConsumerCleaner
from shared.database import create_pool
from shared.dead_letters import list_dead_letters
from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.schema import StreamEvent
from shared.settings import Settings
from shared.stream import StreamConsumer, encode_entry
from tests.faults.support import (
    FAULT_ENV,
    SLOW_COMMIT_SQL,
    Poster,
    PostOutcome,
    acl_user_without_xack,
    applied_count,
    board_totals,
    consumer_pending,
    group_backlog,
    occurred_now,
    pushups,
    reference_totals,
    report,
    stored_count,
    stored_event_ids,
    sum_board_period,
)
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes


async def test_ranker_killed_before_ack(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """A ranker killed after applying e1 but before its ack: the next ranker ends A at exactly 500."""
    names = Names(settings.namespace)
    occurred = occurred_now()
    period = sum_board_period(settings, occurred)
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    poster = Poster(base, key)

    async with acl_user_without_xack(redis_client, settings) as no_ack_url:
        with service_processes(settings, tmp_path / "logs") as services:
            services.start("ingest", "ingest", **FAULT_ENV)
            # This ranker applies events but every XACK it sends is rejected; it never reclaims its own entries.
            services.start("ranker-1", "ranker", **{**FAULT_ENV, "RANKSTREAM_CLAIM_IDLE_MS": "60000"}, RANKSTREAM_REDIS_URL=no_ack_url)
            await wait_healthy(f"{base}/healthz")

            outcome = await poster.post_batches([[pushups("e1", "A", 300, occurred)]], PostOutcome())
            assert outcome.accepted == {"e1"}

            async def e1_applied_not_acked() -> bool:
                totals = await board_totals(redis_client, names, period)
                pending, _lag = await group_backlog(redis_client, names, RANKER_GROUP)
                return totals.get("A") == 300 and pending == 1

            await wait_for(e1_applied_not_acked, what="e1 applied and still pending")
            services.kill("ranker-1")
            dead_consumer = next(iter(await consumer_pending(redis_client, names, RANKER_GROUP)))

            # Clean-up must keep a consumer that owns a pending entry, however idle.
            cleaner = IdleConsumerCleaner(redis_client, names.events_stream, RANKER_GROUP, "nobody", idle_ms=0)
            assert await cleaner.delete_idle_consumers() == []
            assert await consumer_pending(redis_client, names, RANKER_GROUP) == {dead_consumer: 1}

            outcome = await poster.post_batches([[pushups("e2", "A", 200, occurred)]], outcome)
            assert outcome.accepted == {"e1", "e2"}
            services.start("ranker-2", "ranker", **FAULT_ENV)

            async def caught_up() -> bool:
                pending, lag = await group_backlog(redis_client, names, RANKER_GROUP)
                return pending == 0 and lag == 0 and (await board_totals(redis_client, names, period)).get("A") == 500

            await wait_for(caught_up, what="A at 500 with nothing pending")
            totals = await board_totals(redis_client, names, period)
            ranked = await applied_count(redis_client, names, period)
            report("ranker killed before ack", accepted=len(outcome.accepted), ranked=ranked, score_a=int(totals["A"]))
            assert totals == {"A": 500}
            assert ranked == 2

            # With nothing pending any more, the dead consumer may go; the live ranker is kept as the caller.
            consumers = await consumer_pending(redis_client, names, RANKER_GROUP)
            assert consumers[dead_consumer] == 0
            live_consumer = next(name for name in consumers if name != dead_consumer)
            cleaner = IdleConsumerCleaner(redis_client, names.events_stream, RANKER_GROUP, live_consumer, idle_ms=0)
            assert await cleaner.delete_idle_consumers() == [dead_consumer]
            assert dead_consumer not in await consumer_pending(redis_client, names, RANKER_GROUP)
            assert services.stop("ranker-2") == 0


async def test_backlog_bound_answers_503(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """With a bound of 1,000 entries and a dead persister, ingest returns 503 beyond it and loses nothing it accepted."""
    names = Names(settings.namespace)
    occurred = occurred_now()
    period = sum_board_period(settings, occurred)
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    poster = Poster(base, key, concurrency=4)
    env = {**FAULT_ENV, "RANKSTREAM_MAX_BACKLOG": "1000", "RANKSTREAM_DURABILITY": "relaxed"}

    async with acl_user_without_xack(redis_client, settings) as no_ack_url:
        with service_processes(settings, tmp_path / "logs") as services:
            services.start("ingest", "ingest", **env)
            services.start("ranker", "ranker", **env)
            services.start(
                "persister-1", "persister", **{**env, "RANKSTREAM_CLAIM_IDLE_MS": "60000"},
                RANKSTREAM_REDIS_URL=no_ack_url, RANKSTREAM_PERSIST_BATCH_SIZE="20",
            )
            await wait_healthy(f"{base}/healthz")

            first = [pushups(f"first-{i}", f"athlete-{i % 15}", 1, occurred) for i in range(20)]
            outcome = await poster.post_batches([first], PostOutcome())
            assert len(outcome.accepted) == 20

            async def twenty_read() -> bool:
                pending, _lag = await group_backlog(redis_client, names, PERSISTER_GROUP)
                return pending == 20 and await stored_count(settings.database_url) == 20

            await wait_for(twenty_read, what="the persister holding 20 unacknowledged entries")
            services.kill("persister-1")

            # 15 athletes x 100 events of value 1, in requests of 10 events.
            more = [pushups(f"more-{a}-{n}", f"athlete-{a}", 1, occurred) for n in range(100) for a in range(15)]
            requests = [more[i : i + 10] for i in range(0, len(more), 10)]
            outcome = await poster.post_batches(requests, outcome)
            unavailable_requests = outcome.statuses.count(503)
            # The stream contains 20 unacknowledged entries, so 980 more fit: 98 requests of 10.
            assert len(outcome.accepted) == 20 + 980
            assert unavailable_requests == 52
            assert outcome.statuses.count(202) == 1 + 98
            assert outcome.retry_after == {"5"}
            assert await redis_client.xlen(names.events_stream) == 1000

            services.start("persister-2", "persister", **env)

            async def all_stored() -> bool:
                return await stored_count(settings.database_url) == 1000 and await _both_groups_idle(redis_client, names)

            await wait_for(all_stored, timeout_s=30, what="every accepted event in PostgreSQL")
            stored = await stored_event_ids(settings.database_url)
            reference = await reference_totals(settings.database_url)
            totals = await board_totals(redis_client, names, period)
            report(
                "backlog bound", accepted=len(outcome.accepted), unavailable_requests=unavailable_requests,
                persisted=len(stored), ranked=await applied_count(redis_client, names, period),
            )
            assert sorted(stored) == sorted(outcome.accepted)
            assert totals == reference
            assert sum(totals.values()) == 1000
            for service in ("ingest", "ranker", "persister-2"):
                assert services.stop(service) == 0, services.log_text(service)


async def _both_groups_idle(client: redis.Redis, names: Names) -> bool:
    for group in (RANKER_GROUP, PERSISTER_GROUP):
        pending, lag = await group_backlog(client, names, group)
        if (pending, lag) != (0, 0):
            return False
    return True


async def test_rejected_row_dead_lettered(settings: Settings, redis_client: redis.Redis, db: asyncpg.Connection, tmp_path: Path) -> None:
    """Of five events, the one PostgreSQL rejects is dead-lettered with its error; the other four are stored once."""
    names = Names(settings.namespace)
    occurred = occurred_now()
    # A rule that only the database enforces.
    await db.execute("ALTER TABLE events ADD CONSTRAINT events_user_not_blocked CHECK (user_id <> 'blocked')")
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    events = [pushups(f"r{i}", "blocked" if i == 2 else f"athlete-{i}", 10 + i, occurred) for i in range(5)]

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", **FAULT_ENV)
        services.start("persister", "persister", **FAULT_ENV)
        await wait_healthy(f"{base}/healthz")
        outcome = await Poster(base, key).post_batches([events], PostOutcome())
        assert len(outcome.accepted) == 5

        async def settled() -> bool:
            pending, lag = await group_backlog(redis_client, names, PERSISTER_GROUP)
            return (pending, lag) == (0, 0) and await redis_client.xlen(names.dead_letter_stream) == 1

        await wait_for(settled, what="four rows stored and one dead letter")
        stored = await stored_event_ids(settings.database_url)
        letters = await list_dead_letters(redis_client, names, count=10)
        report("rejected row", accepted=len(outcome.accepted), persisted=len(stored), dead_letters=len(letters))
        assert sorted(stored) == ["r0", "r1", "r3", "r4"]
        assert len(letters) == 1
        letter = letters[0]
        assert letter.group == PERSISTER_GROUP
        assert letter.event_id == "r2"
        assert letter.deliveries == 1
        assert "CheckViolationError" in letter.error
        assert "events_user_not_blocked" in letter.error
        assert services.stop("persister") == 0
        # One dead letter and no retry: the rejection was logged once.
        assert services.log_text("persister").count('"event": "entry moved to dead-letter stream"') == 1




def _stream_event(event_id: str, user_id: str, value: int) -> StreamEvent:
    now = occurred_now()
    return StreamEvent(event_id=event_id, user_id=user_id, metric="pushups", value=value, occurred_at=now, received_at=now)


async def test_cancel_between_insert_and_commit(settings: Settings, redis_client: redis.Redis, db: asyncpg.Connection) -> None:
    """A batch cancelled while its COMMIT runs leaves no open transaction, and is stored later, exactly once."""
    names = Names(settings.namespace)
    database = urlsplit(settings.database_url).path.lstrip("/")
    # A deferred trigger runs at COMMIT, after the INSERT, and keeps the commit waiting while the delay is set.
    await db.execute(SLOW_COMMIT_SQL)
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    persister = Persister(pool)
    consumer = StreamConsumer(
        redis_client, names, PERSISTER_GROUP, "persister-test", persister.handle,
        block_ms=50, claim_idle_ms=4000, claim_interval_s=0.1, handle_timeout_s=1.0, trim_interval_s=0,
    )
    running = asyncio.create_task(consumer.run())
    try:
        slow_id = await redis_client.xadd(names.events_stream, encode_entry(_stream_event("slow", "slow-commit", 7)))

        async def commit_waiting() -> bool:
            return await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep' AND query ILIKE 'COMMIT%'", database
            ) == 1

        await wait_for(commit_waiting, what="the batch's COMMIT running its deferred trigger")

        async def cancelled() -> bool:
            sleeping = await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep'", database)
            return sleeping == 0 and await redis_client.hexists(names.failed_entries(PERSISTER_GROUP), slow_id)

        await wait_for(cancelled, what="the handler timeout cancelling the batch")
        open_transactions = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'", database
        )
        assert open_transactions == 0
        assert await stored_count(settings.database_url) == 0
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()

        # The next batch goes through the same single pooled connection and is visible to this other session quickly.
        await db.execute("UPDATE commit_delay SET delay_s = 0")
        await redis_client.xadd(names.events_stream, encode_entry(_stream_event("next-1", "athlete-1", 3)))
        await redis_client.xadd(names.events_stream, encode_entry(_stream_event("next-2", "athlete-2", 4)))
        started_s = time.monotonic()

        async def next_visible() -> bool:
            return await db.fetchval("SELECT count(*) FROM events WHERE event_id IN ('next-1', 'next-2')") == 2

        await wait_for(next_visible, timeout_s=1.0, what="the next batch visible from another session within 1 s")
        visible_after_s = time.monotonic() - started_s

        async def slow_stored() -> bool:
            pending, _lag = await group_backlog(redis_client, names, PERSISTER_GROUP)
            return pending == 0 and await db.fetchval("SELECT count(*) FROM events WHERE event_id = 'slow'") == 1

        await wait_for(slow_stored, what="the cancelled batch stored on a later delivery")
        stored = await stored_event_ids(settings.database_url)
        report("cancelled commit", accepted=3, persisted=len(stored), next_batch_visible_ms=int(visible_after_s * 1000))
        assert sorted(stored) == ["next-1", "next-2", "slow"]
        assert await redis_client.xlen(names.dead_letter_stream) == 0
        assert not await redis_client.exists(names.failed_entries(PERSISTER_GROUP))
    finally:
        consumer.stop()
        await asyncio.wait_for(running, timeout=15)
        await pool.close()
