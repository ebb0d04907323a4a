"""``/metrics``, ``/healthz`` and ``/readyz`` answers, independent of the HTTP server that sends them.

- ``/healthz`` is liveness: 200 while the process's event loop answers.
- ``/readyz`` is readiness: 200 when every dependency check passes (Redis
  replies, PostgreSQL replies, the consumer group is joined, ...), else 503.
  The body is JSON naming each check and its result.
- ``/metrics`` samples Redis (bounded by ``SAMPLE_TIMEOUT_S``) and renders the
  process's registry. A failed sample is logged and the previous one is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis
import structlog

from shared.metrics import CONTENT_TYPE, render_metrics
from shared.names import Names
from shared.redis_stats import RedisSampler

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 2.0
SAMPLE_TIMEOUT_S = 2.0
PROBE_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

# A check returns True when its dependency is usable; it may also raise.
Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class ProbeResponse:
    status: int
    content_type: str
    body: bytes


def redis_check(client: redis.Redis) -> Check:
    async def ping() -> bool:
        return bool(await client.ping())

    return ping


def postgres_check(pool) -> Check:
    """Return a check that runs ``SELECT 1`` on a connection from an asyncpg pool."""

    async def select_one() -> bool:
        async with pool.acquire(timeout=CHECK_TIMEOUT_S) as connection:
            return await connection.fetchval("SELECT 1") == 1

    return select_one


def event_check(event: asyncio.Event) -> Check:
    """Return a check that passes once ``event`` is set (a group joined, a channel subscribed)."""

    async def is_set() -> bool:
        return event.is_set()

    return is_set


async def _run_check(check: Check) -> str:
    try:
        passed = await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"failed: no reply within {CHECK_TIMEOUT_S} s"
    except Exception as error:  # noqa: BLE001 - any failure means not ready; the type is reported
        return f"failed: {type(error).__name__}"
    return "ok" if passed else "failed: not yet"


class Probes:
    """The probe answers of one service process."""

    def __init__(self, checks: Mapping[str, Check], sampler: RedisSampler | None = None) -> None:
        self.checks = dict(checks)
        self.sampler = sampler

    async def readiness(self) -> ProbeResponse:
        names = list(self.checks)
        results = await asyncio.gather(*(_run_check(self.checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        ready = all(result == "ok" for result in results)
        if not ready:
            log.info("not ready", **checks)
        body = msgspec.json.encode({"status": "ready" if ready else "not ready", "checks": checks})
        return ProbeResponse(200 if ready else 503, "application/json", body)

    async def metrics(self) -> ProbeResponse:
        if self.sampler is not None:
            try:
                await asyncio.wait_for(self.sampler.sample(), timeout=SAMPLE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - the rest of the metrics are still worth serving
                log.warning("redis sample failed", error=str(error) or type(error).__name__)
        return ProbeResponse(200, CONTENT_TYPE, render_metrics())

    async def answer(self, path: str) -> ProbeResponse | None:
        """Return the response for a probe path, or None for any other path."""
        if path == "/healthz":
            return ProbeResponse(200, "application/json", b'{"status":"ok"}')
        if path == "/readyz":
            return await self.readiness()
        if path == "/metrics":
            return await self.metrics()
        return None


def consumer_probes(client: redis.Redis, names: Names, joined: asyncio.Event, pool=None) -> Probes:
    """Return the probes of a consumer-group service: Redis, the group joined and, with ``pool``, PostgreSQL."""
    checks: dict[str, Check] = {"redis": redis_check(client)}
    if pool is not None:
        checks["postgres"] = postgres_check(pool)
    checks["group"] = event_check(joined)
    return Probes(checks, RedisSampler(client, names))
