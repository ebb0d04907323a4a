"""Small helpers the phases share: percentiles, event JSON and consumer-group backlog."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timezone

import redis.asyncio as redis

from shared.redis_stats import read_groups

BOARD = "pushups-weekly"
METRIC = "pushups"


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """Return p50, p95 and p99 in milliseconds (nearest rank), or None for each when there are no samples."""
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ordered = sorted(latencies_s)

    def rank(fraction: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}


class Clock:
    """``occurred_at`` text for events, refreshed at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now_text(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._text


def event_json(event_id: str, user_id: str, value: int, occurred_at: str) -> str:
    return f'{{"event_id":"{event_id}","user_id":"{user_id}","metric":"{METRIC}","value":{value},"occurred_at":"{occurred_at}"}}'


async def groups_done(client: redis.Redis, stream: str, groups: tuple[str, ...]) -> bool:
    """Return True when every group in ``groups`` was handed the newest entry and acknowledged everything.

    Lag from XINFO GROUPS can be unknown after the stream was trimmed, so this
    compares the last delivered id with the stream's last generated id instead.
    """
    info = await client.xinfo_stream(stream)
    last = info["last-generated-id"]
    last = last.decode() if isinstance(last, bytes) else last
    found = {group.name: group for group in await read_groups(client, stream)}
    return all(name in found and found[name].pending_entries == 0 and found[name].last_delivered_id == last for name in groups)


async def wait_drained(client: redis.Redis, stream: str, groups: tuple[str, ...], timeout_s: float) -> float | None:
    """Wait until every group in ``groups`` has nothing left; return the perf_counter time, or None on timeout."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await groups_done(client, stream, groups):
            return time.perf_counter()
        await asyncio.sleep(0.05)
    return None


def median_run(runs: list[dict], key: str) -> dict | None:
    """Return the run whose ``key`` is the median (the lower middle one of an even count), with every run's value under ``runs``.

    Runs whose ``key`` is missing or None, such as a phase that did not drain, count as the lowest.
    """
    if not runs:
        return None
    ordered = sorted(runs, key=lambda run: -1.0 if run.get(key) is None else run[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [run.get(key) for run in runs]
    return chosen
