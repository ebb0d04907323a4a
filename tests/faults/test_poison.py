"""A poison event: dead-lettered after five tries with its error, then re-driven by ``rankstream dlq replay``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import redis.asyncio as redis

from shared.dead_letters import list_dead_letters
from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.settings import Settings
from tests.conftest import service_env
from tests.faults.support import (
    FAULT_ENV,
    Poster,
    PostOutcome,
    board_totals,
    group_backlog,
    groups_caught_up,
    occurred_now,
    pushups,
    report,
    stored_event_ids,
    sum_board_period,
)
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes

# A fault PostgreSQL reports with an internal error code (class XX), which the
# persister cannot tell apart from a passing one, so it retries the row.
POISON_TRIGGER_SQL = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'storage for this athlete is damaged' USING ERRCODE = 'XX000';
END $$;
CREATE TRIGGER events_refuse_poison BEFORE INSERT ON events
    FOR EACH ROW WHEN (NEW.user_id = 'poison') EXECUTE FUNCTION refuse_poison();
"""


def _rankstream(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], env=service_env(settings), capture_output=True, text=True, timeout=60
    )


async def test_poison_event_dead_lettered_then_replayed(
    settings: Settings, redis_client: redis.Redis, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """An event the persister cannot store goes to the dead-letter stream after 5 tries, and replay stores it once."""
    names = Names(settings.namespace)
    occurred = occurred_now()
    period = sum_board_period(settings, occurred)
    await db.execute(POISON_TRIGGER_SQL)
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    events = [pushups(f"p{i}", f"athlete-{i}", 10 * (i + 1), occurred) for i in range(3)]
    events.append(pushups("bad-1", "poison", 7, occurred))
    env = {**FAULT_ENV, "RANKSTREAM_CLAIM_IDLE_MS": "200", "RANKSTREAM_CLAIM_INTERVAL_MS": "100"}
    expected_board = {"athlete-0": 10, "athlete-1": 20, "athlete-2": 30, "poison": 7}

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", **env)
        services.start("ranker", "ranker", **env)
        services.start("persister", "persister", **env)
        await wait_healthy(f"{base}/healthz")
        outcome = await Poster(base, key).post_batches([events], PostOutcome())
        assert len(outcome.accepted) == 4

        async def dead_lettered() -> bool:
            return await redis_client.xlen(names.dead_letter_stream) == 1 and await groups_caught_up(redis_client, names)

        await wait_for(dead_lettered, what="the poison event in the dead-letter stream")
        letters = await list_dead_letters(redis_client, names, count=10)
        assert len(letters) == 1
        letter = letters[0]
        assert letter.group == PERSISTER_GROUP
        assert letter.event_id == "bad-1"
        assert letter.deliveries == 5
        assert letter.error == "InternalServerError: storage for this athlete is damaged"
        assert sorted(await stored_event_ids(settings.database_url)) == ["p0", "p1", "p2"]
        assert await board_totals(redis_client, names, period) == expected_board

        listed = _rankstream(settings, "dlq", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == (
            f"{letter.dead_letter_id}\tgroup=persister\tsource_id={letter.source_id}\tevent_id=bad-1\t"
            "deliveries=5\terror=InternalServerError: storage for this athlete is damaged\n"
        )

        # The operator repairs the database, then re-drives the event.
        await db.execute("DROP TRIGGER events_refuse_poison ON events")
        replayed = _rankstream(settings, "dlq", "replay", letter.dead_letter_id)
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.endswith("replayed 1 of 1 dead letters\n")

        async def stored() -> bool:
            return len(await stored_event_ids(settings.database_url)) == 4 and await groups_caught_up(redis_client, names)

        await wait_for(stored, what="the replayed event stored")
        stored_ids = await stored_event_ids(settings.database_url)
        dead_after = await redis_client.xlen(names.dead_letter_stream)
        report("poison event", accepted=len(outcome.accepted), persisted=len(stored_ids), ranked=len(expected_board), dead_letters_after_replay=dead_after)
        assert sorted(stored_ids) == ["bad-1", "p0", "p1", "p2"]
        assert dead_after == 0
        # The replay was meant for the persister only: the ranker skipped it and counted nothing twice.
        assert await board_totals(redis_client, names, period) == expected_board
        assert await group_backlog(redis_client, names, RANKER_GROUP) == (0, 0)
        for service in ("ingest", "ranker", "persister"):
            assert services.stop(service) == 0, services.log_text(service)
