"""The ingest HTTP application: routes, error middleware and startup."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as redis
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from services.gateway.page import add_live_page_routes
from services.ingest.activities.upload import add_activity_routes
from services.ingest.appender import Appender
from services.ingest.auth import AuthError, Authenticator
from services.ingest.auth_failures import AuthFailureLimit
from services.ingest.events import post_events
from services.ingest.observe import add_probe_routes, ingest_probes, metrics_middleware
from services.ingest.admin_keys import delete_key, get_keys, post_key
from services.ingest.openapi import get_openapi
from services.ingest.problems import problem
from services.ingest.rate_limit import RateLimited, RateLimiter
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

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# A random prefix per process and a counter: unique across processes without a
# system call per request, as uuid4 makes.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count(1)


def next_request_id() -> str:
    """Return a new request id, 16 hex digits of this process's prefix and then a sequence number."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):x}"


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Bind a request id and turn every error into problem+json without a stack trace."""
    structlog.contextvars.clear_contextvars()
    request_id = request.headers.get("X-Request-Id") or next_request_id()
    structlog.contextvars.bind_contextvars(request_id=request_id[:64], method=request.method, path=request.path)
    security = request.app[SECURITY_KEY]
    try:
        response = await handler(request)
    except AuthError as error:
        await security.auth_failures.record(request, error)
        title = "Unauthorized" if error.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer realm="rankstream"'} if error.status == 401 else None
        log.info("request not authorised", status=error.status)
        response = problem(error.status, "unauthorized" if error.status == 401 else "forbidden", title, error.detail, headers=headers)
    except RateLimited as error:
        # The first rejection of an empty spell is logged at info. The later
        # ones, which this process returns from memory, go to debug, so a client
        # that keeps sending while limited cannot flood the log.
        if error.allowance.remembered:
            log.debug("request rate limited", retry_after_ms=error.allowance.retry_after_ms)
        else:
            log.info("request rate limited", retry_after_ms=error.allowance.retry_after_ms)
        response = problem(
            429, "rate-limited", "Too many requests", error.detail, headers={"Retry-After": str(error.allowance.retry_after_s)}
        )
    except RequestPayloadError as error:
        # The body could not be read as sent, e.g. Content-Encoding: gzip on a body that is not gzip.
        log.info("request body unreadable", error=str(error))
        response = problem(
            400, "invalid-body", "Invalid body",
            "the request body could not be read; check that it matches its Content-Encoding header, or send it uncompressed",
        )
    except web.HTTPRequestEntityTooLarge:
        response = problem(413, "body-too-large", "Body too large", f"the request body exceeds {security.max_body_bytes} bytes; send a smaller batch")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        # Keep headers the status needs, such as Allow on a 405.
        kept = {name: value for name, value in error.headers.items() if name.lower() in {"allow", "retry-after"}}
        response = problem(error.status, "http-error", error.reason, error.text or error.reason, headers=kept or None)
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
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[metrics_middleware, problem_middleware])
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
