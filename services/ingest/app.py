"""The ingest HTTP application: its routes and the state its handlers share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from services.gateway.page import add_live_page_routes
from services.ingest.activities.upload import add_activity_routes
from services.ingest.appender import Appender
from services.ingest.auth import Authenticator
from services.ingest.auth_failures import AuthFailureLimit
from services.ingest.events import post_events
from services.ingest.middleware import request_middleware
from services.ingest.observe import add_probe_routes, ingest_probes
from services.ingest.admin_keys import delete_key, get_keys, post_key
from services.ingest.openapi import get_openapi
from services.ingest.rate_limit import RateLimiter
from services.ingest.rules import EventRules
from services.ingest.security import SECURITY_KEY, Security
from services.ingest.admin_boards import add_admin_board_routes
from services.ingest.reads import add_read_routes, list_boards
from services.ingest.visibility import add_visibility_routes
from services.ingest.state import STATE_KEY, IngestState
from shared.boards import BoardRegistry
from shared.command_batcher import CommandBatcher
from shared.names import Names
from shared.settings import Settings

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    settings: Settings,
    client: redis.Redis,
    pool: asyncpg.Pool,
    boards: BoardRegistry,
    clock: Callable[[], datetime] = utc_now,
) -> web.Application:
    """Build the application around already opened clients; the caller closes them."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_middleware])
    names = Names(settings.namespace)
    limit_batcher = CommandBatcher(client)
    app[SECURITY_KEY] = Security(
        rules=EventRules.build(boards.by_metric, settings.allowed_metrics, settings.metric_bounds, settings.max_clock_skew_s),
        rate_limiter=RateLimiter(client, names, settings.rate_limit_per_minute, settings.rate_limit_burst_requests, batcher=limit_batcher),
        auth_failures=AuthFailureLimit(
            RateLimiter(client, names, settings.auth_failures_per_minute, settings.auth_failure_burst, batcher=limit_batcher)
        ),
        max_events_per_request=settings.max_events_per_request,
        max_body_bytes=settings.max_body_bytes,
    )
    app[STATE_KEY] = IngestState(
        redis=client,
        pool=pool,
        names=names,
        boards=boards,
        clock=clock,
        appender=Appender(
            client, names, settings.dedupe_ttl_s, durability=settings.durability, waitaof_timeout_ms=settings.waitaof_timeout_ms,
            max_backlog=settings.max_backlog, retry_after_s=settings.retry_after_s,
        ),
        authenticator=Authenticator(pool, settings.api_key_cache_ttl_s, clock),
    )
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/boards", list_boards)
    add_read_routes(app)
    add_admin_board_routes(app)
    add_visibility_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/openapi.json", get_openapi)
    app.router.add_post("/v1/admin/keys", post_key)
    app.router.add_get("/v1/admin/keys", get_keys)
    app.router.add_delete(r"/v1/admin/keys/{key_id:\d{1,18}}", delete_key)
    add_probe_routes(app, ingest_probes(client, pool, names))
    add_activity_routes(app, settings)
    add_live_page_routes(app, settings)
    return app
