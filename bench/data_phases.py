"""Phases on a large board: PostgreSQL COPY, rebuild from PostgreSQL, the naive SQL baseline, reads and memory."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import redis.asyncio as redis

from bench.cluster import ROOT, Cluster
from bench.common import BOARD, METRIC, percentiles_ms
from bench.http_load import build_request, closed_loop
from shared.boards import BoardRegistry, load_boards
from shared.names import Names
from shared.periods import period_of

BOARDS_FILE = ROOT / "deploy" / "boards.toml"
COPY_COLUMNS = ["event_id", "user_id", "metric", "value", "occurred_at", "received_at", "display_name", "groups", "stream_id"]


def board_period(cluster: Cluster) -> tuple[str, str]:
    """Return the scores key of the benchmark board's current period, and the period id."""
    boards = BoardRegistry(load_boards(BOARDS_FILE))
    period = period_of(boards.by_id[BOARD], datetime.now(timezone.utc))
    return Names("rs").board_scores(BOARD, period), period


async def copy_events(cluster: Cluster, *, athletes: int) -> dict:
    """COPY one event per athlete into the events table, the table the persister writes; return rows/s."""
    now = datetime.now(timezone.utc)
    # Inside the current period of every board, so the rebuild puts them all on one board period.
    occurred = now - timedelta(seconds=1)
    rng = random.Random(1)
    records = [
        (f"copy-{n}", f"u{n}", METRIC, float(rng.randint(1, 1000)), occurred, now, None, [], f"0-{n + 1}")
        for n in range(athletes)
    ]
    connection = await asyncpg.connect(cluster.database_url)
    try:
        started = time.perf_counter()
        await connection.copy_records_to_table("events", records=records, columns=COPY_COLUMNS)
        elapsed_s = time.perf_counter() - started
    finally:
        await connection.close()
    return {"rows": athletes, "seconds": round(elapsed_s, 2), "rows_per_s": round(athletes / elapsed_s, 1)}


async def rebuild_board(cluster: Cluster) -> dict:
    """Rebuild the benchmark board from PostgreSQL with the ranker's rebuild code; return events/s."""
    try:
        from services.ranker.rebuild import Rebuilder
    except ImportError as error:
        return {"available": False, "reason": f"rebuild code not importable: {error}"}
    from shared.database import create_pool

    client = redis.Redis.from_url(cluster.redis_url)
    pool = await create_pool(cluster.database_url, min_size=1, max_size=2)
    try:
        boards = BoardRegistry(load_boards(BOARDS_FILE))
        rebuilder = Rebuilder(client, pool, Names("rs"), boards)
        started = time.perf_counter()
        report = await rebuilder.rebuild([BOARD])
        elapsed_s = time.perf_counter() - started
    finally:
        await pool.close()
        await client.aclose()
    return {"available": True, "events": report.events, "seconds": round(elapsed_s, 2), "events_per_s": round(report.events / elapsed_s, 1)}


async def fill_board(cluster: Cluster, *, athletes: int) -> dict:
    """Make sure the board has ``athletes`` members, adding any the rebuild did not produce."""
    key, period = board_period(cluster)
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        present = await client.zcard(key)
        if present < athletes:
            rng = random.Random(2)
            for start in range(0, athletes, 10_000):
                members = {f"u{n}": rng.randint(1, 1000) for n in range(start, min(start + 10_000, athletes))}
                await client.zadd(key, members, nx=True)
        return {"key": key, "period": period, "athletes": await client.zcard(key)}
    finally:
        await client.aclose()


async def naive_postgres(cluster: Cluster, *, count_queries: int, rank_queries: int, athletes: int) -> dict:
    """Rank in PostgreSQL on each read: count(*) of better scores, RANK() over the board and a top-100 query.

    The board is a table of one row per athlete with the summed score, indexed
    on score and on user id, which is what a SQL-only design would maintain.
    """
    connection = await asyncpg.connect(cluster.database_url, command_timeout=600)
    rng = random.Random(3)
    try:
        await connection.execute("DROP TABLE IF EXISTS naive_board")
        started = time.perf_counter()
        await connection.execute(
            f"CREATE TABLE naive_board AS SELECT user_id, sum(value)::bigint AS score FROM events WHERE metric = '{METRIC}' GROUP BY user_id"
        )
        await connection.execute("ALTER TABLE naive_board ADD PRIMARY KEY (user_id)")
        await connection.execute("CREATE INDEX naive_board_score ON naive_board (score DESC)")
        await connection.execute("VACUUM ANALYZE naive_board")
        build_s = time.perf_counter() - started
        rows = await connection.fetchval("SELECT count(*) FROM naive_board")

        async def timed(query: str, runs: int) -> list[float]:
            latencies = []
            for _ in range(runs):
                user = f"u{rng.randrange(athletes)}"
                begin = time.perf_counter()
                if "$1" in query:
                    await connection.fetch(query, user)
                else:
                    await connection.fetch(query)
                latencies.append(time.perf_counter() - begin)
            return latencies

        count_latencies = await timed(
            "SELECT count(*) + 1 AS rank FROM naive_board WHERE score > (SELECT score FROM naive_board WHERE user_id = $1)", count_queries
        )
        rank_latencies = await timed(
            "SELECT rank FROM (SELECT user_id, rank() OVER (ORDER BY score DESC) AS rank FROM naive_board) ranked WHERE user_id = $1", rank_queries
        )
        top_latencies = await timed(
            "SELECT user_id, score, rank() OVER (ORDER BY score DESC) AS rank FROM naive_board ORDER BY score DESC LIMIT 100", count_queries
        )
        await connection.execute("DROP TABLE naive_board")
    finally:
        await connection.close()
    return {
        "rows": rows,
        "table_build_s": round(build_s, 2),
        "count_better": {"queries": count_queries, **percentiles_ms(count_latencies)},
        "rank_window": {"queries": rank_queries, **percentiles_ms(rank_latencies)},
        "top_100": {"queries": count_queries, **percentiles_ms(top_latencies)},
    }


async def http_reads(cluster: Cluster, *, athletes: int, concurrency: int, duration_s: float) -> dict:
    """GET top-100 and one athlete's rank with five neighbours each side, closed loop."""
    headers = {"Authorization": f"Bearer {cluster.api_key}"}
    top = build_request("GET", f"/v1/boards/{BOARD}/top?limit=100", headers=headers)
    rng = random.Random(4)

    def make_top(_number: int) -> bytes:
        return top

    def make_rank(_number: int) -> bytes:
        return build_request("GET", f"/v1/boards/{BOARD}/users/u{rng.randrange(athletes)}?around=5", headers=headers)

    results = {}
    for name, make in (("top_100", make_top), ("rank_with_neighbours", make_rank)):
        run = await closed_loop("127.0.0.1", cluster.http_port, make, concurrency=concurrency, duration_s=duration_s, max_requests=10_000_000)
        results[name] = {
            "requests": len(run.latencies_s),
            "statuses": {str(status): count for status, count in sorted(run.statuses.items())},
            "errors": run.errors,
            "requests_per_s": round(run.ok / run.elapsed_s, 1),
            **percentiles_ms(run.latencies_s),
        }
    return {"concurrency": concurrency, "duration_s": duration_s, **results}


async def memory_sizing(cluster: Cluster, scores_key: str) -> dict:
    """Measure bytes per athlete on a board period, per applied event id, per stream entry and per seen key."""
    client = redis.Redis.from_url(cluster.redis_url)
    names = Names("rs")
    try:
        athletes = await client.zcard(scores_key)
        scores_bytes = await client.memory_usage(scores_key, samples=0) or 0
        applied_key = scores_key.rsplit(":", 1)[0] + ":applied"
        applied = await client.zcard(applied_key)
        applied_bytes = await client.memory_usage(applied_key, samples=0) or 0
        entries = await client.xlen(names.events_stream)
        stream_bytes = await client.memory_usage(names.events_stream, samples=0) or 0
        seen_sample = [key async for key in client.scan_iter(match=f"{names.namespace}:{{events}}:seen:*", count=1000)][:100]
        seen_bytes = [await client.memory_usage(key, samples=0) or 0 for key in seen_sample]
    finally:
        await client.aclose()
    return {
        "athletes": athletes,
        "bytes_per_athlete_scores": round(scores_bytes / athletes, 1) if athletes else None,
        "applied_ids": applied,
        "bytes_per_applied_event_id": round(applied_bytes / applied, 1) if applied else None,
        "stream_entries": entries,
        "bytes_per_stream_entry": round(stream_bytes / entries, 1) if entries else None,
        "seen_keys_sampled": len(seen_bytes),
        "bytes_per_seen_key": round(sum(seen_bytes) / len(seen_bytes), 1) if seen_bytes else None,
    }
