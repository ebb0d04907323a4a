"""Server outages under load, on dedicated servers this test stops and starts: PostgreSQL for 10 s, Valkey killed and restarted."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import redis.asyncio as redis
import websockets

from shared.database import migrate_url
from shared.embedded import EmbeddedPostgres, EmbeddedValkey
from shared.names import PERSISTER_GROUP, Names
from shared.settings import Settings
from tests.faults.support import (
    FAULT_ENV,
    SUM_BOARD,
    Poster,
    PostOutcome,
    applied_count,
    assert_totals_equal,
    batches,
    board_totals,
    group_backlog,
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

OUTAGE_S = 10.0


async def _collect_pushes(ws: websockets.ClientConnection, received: list[tuple[float, dict]]) -> None:
    """Record every message of ``ws`` with the loop time it arrived, until the connection closes."""
    loop = asyncio.get_running_loop()
    async for message in ws:
        received.append((loop.time(), json.loads(message)))


async def test_postgres_outage_under_load(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """PostgreSQL down for 10 s: ranking and push go on, nothing is lost, and the persister's lag returns to zero."""
    postgres = EmbeddedPostgres(tmp_path / "postgres", durable=False)
    await asyncio.to_thread(postgres.start)
    try:
        await migrate_url(postgres.url)
        own = replace(settings, database_url=postgres.url)
        names = Names(own.namespace)
        occurred = occurred_now()
        period = sum_board_period(own, occurred)
        key = await new_key(own)
        base = f"http://127.0.0.1:{own.http_port}"
        # Keys stay cached through the outage, so ingest keeps accepting events.
        env = {**FAULT_ENV, "RANKSTREAM_API_KEY_CACHE_TTL_S": "300"}
        events = load_events("pg", 2000, 20, occurred)

        with service_processes(own, tmp_path / "logs") as services:
            for service in ("ingest", "ranker", "persister", "gateway"):
                services.start(service, service, **env)
            await wait_healthy(f"{base}/healthz")
            await wait_healthy(f"http://127.0.0.1:{own.ws_port}/healthz")
            ws = await websockets.connect(f"ws://127.0.0.1:{own.ws_port}/v1/ws")
            await ws.send(json.dumps({"type": "subscribe", "id": "board", "board": SUM_BOARD, "top": 3}))
            pushes: list[tuple[float, dict]] = []
            collecting = asyncio.create_task(_collect_pushes(ws, pushes))
            # About 16 s of steady load: 160 requests of 12 or 13 events, 10 a second.
            load = asyncio.create_task(
                Poster(base, key, concurrency=4).post_batches(batches(events, 13), PostOutcome(), retry_until_s=60, requests_per_s=10)
            )

            async def persisting() -> bool:
                return await stored_count(postgres.url) >= 100

            await wait_for(persisting, what="the persister storing events")
            await asyncio.to_thread(postgres.stop)
            down_at = asyncio.get_running_loop().time()
            ranked_at_stop = await applied_count(redis_client, names, period)

            async def ranking_goes_on() -> bool:
                return await applied_count(redis_client, names, period) >= ranked_at_stop + 300

            await wait_for(ranking_goes_on, timeout_s=OUTAGE_S - 1, what="the ranker applying events while PostgreSQL is down")
            pending_during_outage, _lag = await group_backlog(redis_client, names, PERSISTER_GROUP)

            def pushed_while_down() -> int:
                return sum(1 for at, message in pushes if at >= down_at and message.get("type") == "update")

            async def push_goes_on() -> bool:
                return pushed_while_down() > 0

            await wait_for(push_goes_on, timeout_s=3, what="a rank change pushed while PostgreSQL is down")
            updates_while_down = pushed_while_down()
            # The outage itself lasts a fixed time; nothing waits on this sleep for a result.
            await asyncio.sleep(max(0.0, down_at + OUTAGE_S - asyncio.get_running_loop().time()))
            await asyncio.to_thread(postgres.start)

            outcome = await asyncio.wait_for(load, timeout=90)

            async def caught_up() -> bool:
                return await stored_count(postgres.url) == len(outcome.stored) and await groups_caught_up(redis_client, names)

            await wait_for(caught_up, timeout_s=45, what="the persister catching up after the outage")
            stored = await stored_event_ids(postgres.url)
            reference = await reference_totals(postgres.url)
            totals = await board_totals(redis_client, names, period)
            ranked = await applied_count(redis_client, names, period)
            report("postgres outage", accepted=len(outcome.stored), persisted=len(stored), ranked=ranked,
                   persister_pending_during_outage=pending_during_outage, updates_pushed_while_down=updates_while_down)
            assert pending_during_outage > 0
            assert len(outcome.stored) == 2000
            assert sorted(stored) == sorted(outcome.stored)
            assert ranked == 2000
            assert_totals_equal(totals, reference)
            assert await group_backlog(redis_client, names, PERSISTER_GROUP) == (0, 0)
            await ws.close()
            await asyncio.wait_for(collecting, timeout=10)
            for service in ("ingest", "ranker", "persister", "gateway"):
                assert services.stop(service) == 0, services.log_text(service)
    finally:
        await asyncio.to_thread(postgres.stop)


async def test_valkey_restart_under_load(settings: Settings, tmp_path: Path) -> None:
    """Valkey killed and restarted from its append-only file: no accepted event lost, services recover on their own."""
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
        events = load_events("vk", 2000, 20, occurred)

        with service_processes(own, tmp_path / "logs") as services:
            started = {service: services.start(service, service, **FAULT_ENV) for service in ("ingest", "ranker", "persister", "gateway")}
            await wait_healthy(f"{base}/healthz")
            await wait_healthy(f"http://127.0.0.1:{own.ws_port}/healthz")
            ws = await websockets.connect(f"ws://127.0.0.1:{own.ws_port}/v1/ws")
            await ws.send(json.dumps({"type": "subscribe", "id": "board", "board": SUM_BOARD, "top": 3}))
            pushes: list[tuple[float, dict]] = []
            collecting = asyncio.create_task(_collect_pushes(ws, pushes))
            load = asyncio.create_task(
                Poster(base, key, concurrency=4).post_batches(batches(events, 20), PostOutcome(), retry_until_s=60, requests_per_s=10)
            )

            async def persisting() -> bool:
                return await stored_count(own.database_url) >= 200

            await wait_for(persisting, what="events flowing before the restart")
            run_id_before = (await client.info("server"))["run_id"]
            await asyncio.to_thread(valkey.kill)
            await asyncio.to_thread(valkey.start)
            assert (await client.info("server"))["run_id"] != run_id_before
            restarted_at = asyncio.get_running_loop().time()

            def pushed_after_restart() -> int:
                return sum(1 for at, message in pushes if at >= restarted_at and message.get("type") == "update")

            async def push_resumed() -> bool:
                return pushed_after_restart() > 0

            # The gateway must subscribe again on its own to push the changes made after the restart.
            await wait_for(push_resumed, timeout_s=15, what="a rank change pushed after the restart")

            outcome = await asyncio.wait_for(load, timeout=90)

            async def caught_up() -> bool:
                return await stored_count(own.database_url) == len(outcome.stored) and await groups_caught_up(client, names)

            await wait_for(caught_up, timeout_s=45, what="every accepted event stored after the restart")
            stored = await stored_event_ids(own.database_url)
            reference = await reference_totals(own.database_url)
            totals = await board_totals(client, names, period)
            ranked = await applied_count(client, names, period)
            report("valkey restart", accepted=len(outcome.stored), persisted=len(stored), ranked=ranked,
                   unanswered_or_refused=outcome.unanswered_requests + sum(1 for status in outcome.statuses if status >= 500),
                   updates_pushed_after_restart=pushed_after_restart())
            assert len(outcome.stored) == 2000
            assert sorted(stored) == sorted(outcome.stored)
            assert ranked == 2000
            assert_totals_equal(totals, reference)
            # The same processes ran throughout: none was restarted.
            assert all(process.poll() is None for process in started.values())
            await ws.close()
            await asyncio.wait_for(collecting, timeout=10)
            for service in ("ingest", "ranker", "persister", "gateway"):
                assert services.processes[service] is started[service]
                assert services.stop(service) == 0, services.log_text(service)
    finally:
        await client.aclose()
        await asyncio.to_thread(valkey.stop)
