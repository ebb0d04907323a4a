"""Consumers killed with SIGKILL under load, and many consumers at once: every event stored once, every board exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as redis

from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.settings import Settings
from tests.faults.support import (
    FAULT_ENV,
    Poster,
    PostOutcome,
    applied_count,
    assert_totals_equal,
    batches,
    board_totals,
    extra_database,
    group_backlog,
    groups_caught_up,
    load_events,
    log_events,
    occurred_now,
    reference_totals,
    report,
    stored_count,
    stored_event_ids,
    sum_board_period,
    with_database,
)
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import ServiceProcesses, service_processes

KILL_ROUNDS = 3
# Small batches, so a kill usually lands with a batch in flight.
SMALL_BATCHES = {"RANKSTREAM_READ_COUNT": "50", "RANKSTREAM_PERSIST_BATCH_SIZE": "50"}


async def _kill_mid_batch(services: ServiceProcesses, client: redis.Redis, names: Names, group: str, name: str) -> bool:
    """Kill ``name`` with SIGKILL, if possible while its group has a batch pending; return whether it had one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    mid_batch = False
    while loop.time() < deadline:
        pending, _lag = await group_backlog(client, names, group)
        if pending > 0:
            mid_batch = True
            break
        await asyncio.sleep(0.005)
    services.kill(name)
    return mid_batch


async def _kill_and_restart(
    services: ServiceProcesses, settings: Settings, client: redis.Redis, load: asyncio.Task, env: dict[str, str]
) -> tuple[int, int]:
    """Kill the ranker and the persister with SIGKILL a few times while ``load`` runs; return (kills, kills mid-batch)."""
    names = Names(settings.namespace)
    kills = 0
    mid_batch = 0
    for round_number in range(KILL_ROUNDS):
        if load.done():
            break
        # Wait for progress since the last restart, so each kill hits a working consumer.
        floor = await stored_count(settings.database_url)

        async def progressed(floor: int = floor) -> bool:
            return load.done() or await stored_count(settings.database_url) >= floor + 100

        await wait_for(progressed, timeout_s=30, what="the persister making progress")
        mid_batch += await _kill_mid_batch(services, client, names, RANKER_GROUP, f"ranker-{round_number}")
        mid_batch += await _kill_mid_batch(services, client, names, PERSISTER_GROUP, f"persister-{round_number}")
        kills += 2
        services.start(f"ranker-{round_number + 1}", "ranker", **env)
        services.start(f"persister-{round_number + 1}", "persister", **env)
    return kills, mid_batch


def _service_names(rounds: int) -> list[str]:
    return [f"{service}-{number}" for service in ("ranker", "persister") for number in range(rounds + 1)]


async def test_sigkill_consumers_under_load(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """Killing rankers and persisters mid-batch loses nothing and counts nothing twice."""
    names = Names(settings.namespace)
    occurred = occurred_now()
    period = sum_board_period(settings, occurred)
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    env = {**FAULT_ENV, **SMALL_BATCHES}
    events = load_events("load", 3000, 20, occurred)

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", **env)
        services.start("ranker-0", "ranker", **env)
        services.start("persister-0", "persister", **env)
        await wait_healthy(f"{base}/healthz")

        # A steady load for about 12 s: 120 requests of 25 events, 10 a second, each retried until it gets a 2xx.
        load = asyncio.create_task(
            Poster(base, key, concurrency=4).post_batches(batches(events, 25), PostOutcome(), retry_until_s=60, requests_per_s=10)
        )
        kills, mid_batch = await _kill_and_restart(services, settings, redis_client, load, env)
        outcome = await asyncio.wait_for(load, timeout=90)

        async def settled() -> bool:
            return await stored_count(settings.database_url) == len(outcome.stored) and await groups_caught_up(redis_client, names)

        await wait_for(settled, timeout_s=45, what="every accepted event stored and both groups caught up")
        stored = await stored_event_ids(settings.database_url)
        reference = await reference_totals(settings.database_url)
        totals = await board_totals(redis_client, names, period)
        ranked = await applied_count(redis_client, names, period)
        # How often a consumer took over entries a killed one left pending: shown, not asserted, because timing decides it.
        claims = sum(log_events(services.log_text(name), "claimed idle entries") for name in _service_names(KILL_ROUNDS))
        report("sigkill under load", kills=kills, accepted=len(outcome.stored), persisted=len(stored), ranked=ranked, mid_batch_kills=mid_batch, claims=claims)
        assert kills == 2 * KILL_ROUNDS
        assert mid_batch >= 1
        assert len(outcome.stored) == 3000
        assert sorted(stored) == sorted(outcome.stored)
        assert ranked == 3000
        assert_totals_equal(totals, reference)
        assert sum(totals.values()) == sum(1 + i % 5 for i in range(3000))
        assert await redis_client.xlen(names.dead_letter_stream) == 0


async def _run_pipeline(settings: Settings, log_dir: Path, rankers: int, persisters: int, events: list[dict]) -> tuple[list[str], dict[str, float], int]:
    """Post ``events`` through ingest, ``rankers`` rankers and ``persisters`` persisters; return what they stored and ranked."""
    names = Names(settings.namespace)
    period = sum_board_period(settings, occurred_now())
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    env = {**FAULT_ENV, **SMALL_BATCHES, "RANKSTREAM_DURABILITY": "relaxed"}
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with service_processes(settings, log_dir) as services:
            services.start("ingest", "ingest", **env)
            for number in range(rankers):
                services.start(f"ranker-{number}", "ranker", **env)
            for number in range(persisters):
                services.start(f"persister-{number}", "persister", **env)
            await wait_healthy(f"{base}/healthz")
            outcome = await Poster(base, key, concurrency=4).post_batches(batches(events, 25), PostOutcome())
            assert len(outcome.accepted) == len(events)

            async def settled() -> bool:
                return await stored_count(settings.database_url) == len(events) and await groups_caught_up(client, names)

            await wait_for(settled, timeout_s=45, what="every event stored and both groups caught up")
            for name in list(services.processes):
                assert services.stop(name) == 0, services.log_text(name)
        return await stored_event_ids(settings.database_url), await board_totals(client, names, period), await applied_count(client, names, period)
    finally:
        async for leftover in client.scan_iter(match=f"{names.namespace}:*", count=1000):
            await client.unlink(leftover)
        await client.aclose()


async def test_many_consumers_match_one_of_each(settings: Settings, servers, redis_client: redis.Redis, tmp_path: Path) -> None:
    """Three rankers and two persisters store and rank exactly what one of each does."""
    events = load_events("scale", 1500, 15, occurred_now())
    single_stored, single_totals, single_ranked = await _run_pipeline(settings, tmp_path / "single", 1, 1, events)
    async with extra_database(servers.database_url) as database_url:
        many = with_database(settings, database_url, namespace=f"{settings.namespace}m")
        many_stored, many_totals, many_ranked = await _run_pipeline(many, tmp_path / "many", 3, 2, events)
        reference = await reference_totals(database_url)
    report("3 rankers and 2 persisters", accepted=len(events), persisted=len(many_stored), ranked=many_ranked,
           single_persisted=len(single_stored), single_ranked=single_ranked)
    assert sorted(many_stored) == sorted(single_stored)
    assert len(many_stored) == 1500
    assert many_ranked == single_ranked == 1500
    assert many_totals == single_totals
    assert_totals_equal(many_totals, reference)
