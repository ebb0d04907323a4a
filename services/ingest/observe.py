"""Request metrics and the probe routes of the ingest HTTP application."""

from __future__ import annotations

import functools
import time
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from shared.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from shared.names import Names
from shared.probes import Probes, postgres_check, redis_check
from shared.redis_stats import RedisSampler

PROBES_KEY: web.AppKey[Probes] = web.AppKey("probes", Probes)

# Requests that match no route share one label, so unknown paths cannot add series.
UNMATCHED_ROUTE = "unmatched"


def route_label(request: web.Request) -> str:
    """Return the route template (``/v1/boards/{board}/top``), never the raw path."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Count and time every request by route, method and final status; it wraps the error middleware."""
    started_s = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        route = route_label(request)
        counter, timer = _series(route, request.method, status)
        counter.inc()
        timer.observe(time.perf_counter() - started_s)


@functools.lru_cache(maxsize=1024)
def _series(route: str, method: str, status: int) -> tuple[Any, Any]:
    """Return the request counter and timer of one label set; ``labels()`` costs a lock and a lookup per call."""
    return HTTP_REQUESTS.labels(route=route, method=method, status=str(status)), HTTP_REQUEST_DURATION.labels(route=route, method=method)


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
