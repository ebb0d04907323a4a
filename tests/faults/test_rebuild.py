"""Redis losing every board: the ranker rebuilds them from PostgreSQL, and later events count once on top."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import redis.asyncio as redis

from shared.embedded import EmbeddedValkey
from shared.names import Names
from shared.settings import Settings
from tests.faults.support import (
    FAULT_ENV,
    Poster,
    PostOutcome,
    applied_count,
    batches,
    board_totals,
    groups_caught_up,
    load_events,
    occurred_now,
    reference_totals,
    report,
    stored_count,
    stored_event_ids,
    sum_board_period,
)
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes


async def test_flushed_boards_rebuilt_by_ranker(settings: Settings, tmp_path: Path) -> None:
    """After FLUSHALL the ranker rebuilds every board from PostgreSQL; boards then equal the reference."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    await asyncio.to_thread(valkey.start)
    client = redis.Redis.from_url(valkey.url)
    try:
        own = replace(settings, redis_url=valkey.url)
        names = Names(own.namespace)
        occurred = occurred_now()
        period = sum_board_period(own, occurred)
        key = await new_key(own)
        base = f"http://127.0.0.1:{own.http_port}"
        env = {**FAULT_ENV, "RANKSTREAM_DURABILITY": "relaxed"}
        before = load_events("before", 600, 12, occurred)
        after = load_events("after", 300, 12, occurred)

        with service_processes(own, tmp_path / "logs") as services:
            for service in ("ingest", "ranker", "persister"):
                services.start(service, service, **env)
            await wait_healthy(f"{base}/healthz")
            outcome = await Poster(base, key).post_batches(batches(before, 25), PostOutcome())

            async def first_settled() -> bool:
                return await stored_count(own.database_url) == 600 and await groups_caught_up(client, names)

            await wait_for(first_settled, what="the first 600 events stored and ranked")
            for service in ("ingest", "ranker", "persister"):
                assert services.stop(service) == 0, services.log_text(service)

            # Redis loses everything: boards, stream and groups.
            await client.flushall()
            assert await board_totals(client, names, period) == {}

            services.start("ranker-after-flush", "ranker", **env)
            reference_before = await reference_totals(own.database_url)

            async def rebuilt() -> bool:
                return await board_totals(client, names, period) == reference_before

            await wait_for(rebuilt, timeout_s=30, what="the ranker rebuilding the boards from PostgreSQL")
            rebuilt_ranked = await applied_count(client, names, period)

            services.start("persister-after-flush", "persister", **env)
            services.start("ingest-after-flush", "ingest", **env)
            await wait_healthy(f"{base}/healthz")
            outcome = await Poster(base, key).post_batches(batches(after, 25), outcome)

            async def second_settled() -> bool:
                return await stored_count(own.database_url) == 900 and await groups_caught_up(client, names)

            await wait_for(second_settled, what="the next 300 events stored and ranked")
            stored = await stored_event_ids(own.database_url)
            reference = await reference_totals(own.database_url)
            totals = await board_totals(client, names, period)
            ranked = await applied_count(client, names, period)
            report("boards rebuilt", accepted=len(outcome.accepted), persisted=len(stored), ranked=ranked, rebuilt_ranked=rebuilt_ranked)
            assert len(outcome.accepted) == 900
            assert sorted(stored) == sorted(outcome.accepted)
            assert rebuilt_ranked == 600
            assert ranked == 900
            assert totals == reference
            for name in ("ranker-after-flush", "persister-after-flush", "ingest-after-flush"):
                assert services.stop(name) == 0, services.log_text(name)
    finally:
        await client.aclose()
        await asyncio.to_thread(valkey.stop)
