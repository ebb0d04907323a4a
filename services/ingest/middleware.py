"""The one middleware of the ingest application: request id, log fields, problem responses and request metrics.

It is one middleware instead of two because each layer costs every request a
call and a frame. An instruction count of single-event POSTs under callgrind
showed the second layer.
"""

from __future__ import annotations

import itertools
import secrets
import time

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from services.ingest.auth import AuthError
from services.ingest.problems import problem
from services.ingest.rate_limit import RateLimited
from services.ingest.security import SECURITY_KEY
from shared.logs import start_unit_of_work
from shared.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS

log = structlog.get_logger(__name__)

# Requests that match no route share one label, so unknown paths cannot add series.
UNMATCHED_ROUTE = "unmatched"
# A client's own X-Request-Id is kept up to this many characters.
MAX_REQUEST_ID_CHARS = 64
# Headers of an HTTP error that its problem response keeps, such as Allow on a 405.
_KEPT_ERROR_HEADERS = frozenset({"allow", "retry-after"})
# Label values of the usual status codes, made once.
_STATUS_TEXT = {status: str(status) for status in (200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503)}

# A random prefix per process and a counter: unique across processes without a
# system call per request, as uuid4 makes.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count(1)


def next_request_id() -> str:
    """Return a new request id, 16 hex digits of this process's prefix and then a sequence number."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):x}"


@web.middleware
async def request_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Bind a request id, turn every error into problem+json without a stack trace, and count and time the request."""
    started_s = time.perf_counter()
    request_id = (request.headers.get("X-Request-Id") or next_request_id())[:MAX_REQUEST_ID_CHARS]
    start_unit_of_work(request_id=request_id, method=request.method, path=request.path)
    # Counted as 500 unless a response or a raised redirect gives another
    # status, so a cancelled request is counted too.
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as error:  # noqa: BLE001 - every error becomes a problem response
            if isinstance(error, web.HTTPException) and error.status < 400:
                # aiohttp sends a raised redirect or empty success itself.
                status = error.status
                error.headers["X-Request-Id"] = request_id
                raise
            response = await _problem_for(request, error, request_id)
        status = response.status
    finally:
        _record(request, status, started_s)
    response.headers["X-Request-Id"] = request_id
    return response


async def _problem_for(request: web.Request, error: Exception, request_id: str) -> web.Response:
    """Return the problem+json response of an error raised by a handler, logging it once."""
    security = request.app[SECURITY_KEY]
    if isinstance(error, AuthError):
        try:
            await security.auth_failures.record(request, error)
        except Exception as failure:  # noqa: BLE001 - the client still gets its 401 or 403
            # Such as Redis rejecting the script at maxmemory. Connection errors
            # never get here: the limiter lets the request through on those.
            log.error("failed authentication not counted", exc_info=failure)
        log.info("request not authorised", status=error.status)
        if error.status == 401:
            return problem(401, "unauthorized", "Unauthorized", error.detail, headers={"WWW-Authenticate": 'Bearer realm="rankstream"'})
        return problem(error.status, "forbidden", "Forbidden", error.detail)
    if isinstance(error, RateLimited):
        # The first rejection of an empty spell is logged at info. The later
        # ones, which this process returns from memory, go to debug, so a client
        # that keeps sending while limited cannot flood the log.
        if error.allowance.remembered:
            log.debug("request rate limited", retry_after_ms=error.allowance.retry_after_ms)
        else:
            log.info("request rate limited", retry_after_ms=error.allowance.retry_after_ms)
        return problem(429, "rate-limited", "Too many requests", error.detail, headers={"Retry-After": str(error.allowance.retry_after_s)})
    if isinstance(error, RequestPayloadError):
        # The body could not be read as sent, e.g. Content-Encoding: gzip on a body that is not gzip.
        log.info("request body unreadable", error=str(error))
        return problem(
            400, "invalid-body", "Invalid body",
            "the request body could not be read; check that it matches its Content-Encoding header, or send it uncompressed",
        )
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return problem(413, "body-too-large", "Body too large", f"the request body exceeds {security.max_body_bytes} bytes; send a smaller batch")
    if isinstance(error, web.HTTPException):
        kept_headers = {name: value for name, value in error.headers.items() if name.lower() in _KEPT_ERROR_HEADERS}
        return problem(error.status, "http-error", error.reason, error.text or error.reason, headers=kept_headers or None)
    log.error("request failed", exc_info=error)
    return problem(500, "internal-error", "Internal server error", f"the request failed; quote request id {request_id} when reporting it")


def _record(request: web.Request, status: int, started_s: float) -> None:
    """Count and time one request by route template, method and final status."""
    route = route_label(request)
    method = request.method
    HTTP_REQUESTS.inc((route, method, _STATUS_TEXT.get(status) or str(status)))
    HTTP_REQUEST_DURATION.observe((route, method), time.perf_counter() - started_s)


def route_label(request: web.Request) -> str:
    """Return the route template (``/v1/boards/{board}/top``), never the raw path."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical
