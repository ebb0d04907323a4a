"""The ingest HTTP application: routes, error middleware and startup."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as redis
import structlog
from aiohttp import web

from services.ingest.appender import Appender
from services.ingest.auth import AuthError, Authenticator
from services.ingest.events import post_events
from services.ingest.problems import problem
from services.ingest.reads import get_top, get_user, list_boards
from services.ingest.state import STATE_KEY, IngestState
from shared.boards import BoardRegistry
from shared.names import Names
from shared.settings import Settings

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Bind a request id and turn every error into problem+json without a stack trace."""
    structlog.contextvars.clear_contextvars()
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id[:64], method=request.method, path=request.path)
    try:
        response = await handler(request)
    except AuthError as error:
        title = "Unauthorized" if error.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer realm="rankstream"'} if error.status == 401 else None
        log.info("request not authorised", status=error.status)
        response = problem(error.status, "unauthorized" if error.status == 401 else "forbidden", title, error.detail, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        response = problem(413, "body-too-large", "Body too large", f"the request body exceeds {MAX_BODY_BYTES} bytes; send at most 1 MiB per request")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = problem(error.status, "http-error", error.reason, error.text or error.reason)
    except Exception:
        log.exception("request failed")
        response = problem(500, "internal-error", "Internal server error", f"the request failed; quote request id {request_id} when reporting it")
    response.headers["X-Request-Id"] = request_id[:64]
    return response


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
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[problem_middleware])
    names = Names(settings.namespace)
    app[STATE_KEY] = IngestState(
        redis=client,
        pool=pool,
        names=names,
        boards=boards,
        clock=clock,
        appender=Appender(client, names, settings.dedupe_ttl_s),
        authenticator=Authenticator(pool, settings.api_key_cache_ttl_s, clock),
    )
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/boards", list_boards)
    app.router.add_get("/v1/boards/{board}/top", get_top)
    app.router.add_get("/v1/boards/{board}/users/{user_id}", get_user)
    app.router.add_get("/healthz", healthz)
    return app
