"""The probe routes of the ingest HTTP application: /metrics and /readyz."""

from __future__ import annotations

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from shared.names import Names
from shared.probes import Probes, postgres_check, redis_check
from shared.redis_stats import RedisSampler

PROBES_KEY: web.AppKey[Probes] = web.AppKey("probes", Probes)


async def _probe(request: web.Request) -> web.Response:
    answer = await request.app[PROBES_KEY].answer(request.path)
    assert answer is not None, "probe routes are registered only for probe paths"
    response = web.Response(status=answer.status, body=answer.body)
    response.headers["Content-Type"] = answer.content_type
    return response


def add_probe_routes(app: web.Application, probes: Probes) -> None:
    """Serve ``/metrics`` and ``/readyz`` from ``probes``; ``/healthz`` stays the app's own route."""
    app[PROBES_KEY] = probes
    app.router.add_get("/metrics", _probe)
    app.router.add_get("/readyz", _probe)


def ingest_probes(client: redis.Redis, pool: asyncpg.Pool, names: Names) -> Probes:
    """Return the ingest's probes: ready when Redis and PostgreSQL both reply."""
    return Probes({"redis": redis_check(client), "postgres": postgres_check(pool)}, RedisSampler(client, names))
