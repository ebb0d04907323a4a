"""``rankstream simulate``: a crowd of athletes posting through the public HTTP API.

Values follow plausible distributions per metric: push-up sets of about 20,
runs of about 5 km with a long tail, 5 km times around 28 minutes. About 2% of
posts repeat an earlier event (a retrying device) and about 5% arrive late, up
to two days after the workout.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import structlog

from shared.runtime import http_base_url
from shared.settings import Settings

log = structlog.get_logger(__name__)

TICK_S = 0.1
DUPLICATE_SHARE = 0.02
LATE_SHARE = 0.05


def _athlete_names(count: int, rng: random.Random) -> list[tuple[str, str]]:
    first = ["Ada", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Mo", "Nia", "Oskar", "Priya"]
    last = ["Adams", "Berg", "Costa", "Diaz", "Eze", "Fischer", "Gupta", "Hill", "Ito", "Jones", "Kim", "Lopez", "Meyer", "Novak"]
    return [(f"athlete-{index:05d}", f"{rng.choice(first)} {rng.choice(last)}") for index in range(count)]


def make_event(rng: random.Random, athlete: tuple[str, str], sequence: int, now: datetime) -> dict:
    """Return one plausible event for ``athlete``."""
    user_id, display_name = athlete
    kind = rng.random()
    if kind < 0.6:
        metric, value = "pushups", max(1, int(rng.gauss(20, 8)))
    elif kind < 0.9:
        metric, value = "run_distance_m", round(min(42195.0, rng.lognormvariate(8.5, 0.5)), 1)
    else:
        metric, value = "run_5k_time_s", round(max(780.0, rng.gauss(1680, 240)), 1)
    occurred_at = now - timedelta(seconds=rng.uniform(0, 60))
    if rng.random() < LATE_SHARE:
        occurred_at = now - timedelta(hours=rng.uniform(1, 48))
    return {
        "event_id": f"sim-{user_id}-{sequence}-{rng.getrandbits(32):08x}",
        "user_id": user_id,
        "display_name": display_name,
        "metric": metric,
        "value": value,
        "occurred_at": occurred_at.isoformat(),
    }


async def _default_key(settings: Settings) -> str:
    from shared.api_keys import create_key
    from shared.runtime import resolve_servers

    import asyncpg

    settings = resolve_servers(settings)
    connection = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        key, text = await create_key(connection, "simulate")
    finally:
        await connection.close(timeout=5)
    log.info("api key created for simulation", key_id=key.id)
    return text


async def run_simulation(
    settings: Settings, *, athletes: int, rate: float, duration_s: float | None, key: str | None, seed: int | None
) -> int:
    """Post about ``rate`` events per second until ``duration_s`` passes (or forever); return an exit code."""
    if athletes < 1 or rate <= 0:
        print("rankstream: --athletes must be at least 1 and --rate above 0")
        return 2
    key = key or os.environ.get("RANKSTREAM_API_KEY") or await _default_key(settings)
    rng = random.Random(seed)
    crowd = _athlete_names(athletes, rng)
    url = f"{http_base_url(settings)}/v1/events"
    headers = {"Authorization": f"Bearer {key}"}
    sent: list[dict] = []
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "conflict": 0}
    started = time.monotonic()
    owed = 0.0
    sequence = 0
    log.info("simulation started", athletes=athletes, rate=rate, url=url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while duration_s is None or time.monotonic() - started < duration_s:
            tick_started = time.monotonic()
            owed += rate * TICK_S
            batch = []
            now = datetime.now(timezone.utc)
            while owed >= 1:
                owed -= 1
                sequence += 1
                if sent and rng.random() < DUPLICATE_SHARE:
                    batch.append(rng.choice(sent))
                else:
                    event = make_event(rng, rng.choice(crowd), sequence, now)
                    batch.append(event)
                    sent.append(event)
                    if len(sent) > 1000:
                        sent.pop(0)
            if batch:
                try:
                    async with session.post(url, json=batch, headers=headers) as response:
                        body = await response.json(content_type=None)
                    if response.status >= 400:
                        log.warning("post failed, batch dropped", status=response.status, detail=body.get("detail"), events=len(batch))
                    else:
                        for result in body["results"]:
                            counts[result["status"]] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    log.warning("post failed, batch dropped", error=str(error), events=len(batch))
            await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - tick_started)))
    log.info("simulation finished", **counts)
    print(f"accepted {counts['accepted']}, duplicate {counts['duplicate']}, rejected {counts['rejected']}, conflict {counts['conflict']}")
    return 0
