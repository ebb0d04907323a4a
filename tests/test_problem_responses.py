"""Error responses: problem+json with a request id, never a stack trace or an exception's text."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

import aiohttp
import structlog
from aiohttp import web
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from services.ingest import middleware as ingest_middleware
from services.ingest.security import SECURITY_KEY
from shared.logs import bind_to_unit_of_work, configure_logging
from shared.metrics import HTTP_REQUESTS
from shared.settings import Settings
from tests.helpers import ingest_client


async def test_unexpected_error_hides_details(settings: Settings, redis_client) -> None:
    """A handler that raises gets 500 problem+json naming only the request id."""
    secret = "rsk_" + "S" * 43

    async def failing(_request: web.Request) -> web.Response:
        raise RuntimeError(f"database password is hunter2, key {secret}")

    async with ingest_client(settings, extra_get_routes={"/v1/failing": failing}) as http:
        response = await http.get("/v1/failing", headers={"X-Request-Id": "req-1"})
        text = await response.text()

    assert response.status == 500
    assert response.content_type == "application/problem+json"
    assert response.headers["X-Request-Id"] == "req-1"
    assert text == (
        '{"type":"urn:rankstream:problem:internal-error","title":"Internal server error","status":500,'
        '"detail":"the request failed; quote request id req-1 when reporting it"}'
    )
    assert "Traceback" not in text
    assert "hunter2" not in text
    assert secret not in text


async def test_body_not_matching_encoding_is_400(settings: Settings, redis_client) -> None:
    """A body that does not match its Content-Encoding gets 400 problem+json, not 500."""
    from tests.helpers import new_key

    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", data=b"not gzip", headers=headers)
        body = await response.json(content_type=None)

    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert body["type"] == "urn:rankstream:problem:invalid-body"
    assert body["detail"] == (
        "the request body could not be read; check that it matches its Content-Encoding header, or send it uncompressed"
    )


def _requests_counted(route: str, status: str) -> float:
    return HTTP_REQUESTS.values.get((route, "GET", status), 0.0) + HTTP_REQUESTS.values.get((route, "POST", status), 0.0)


async def test_raised_redirect_keeps_its_status_and_request_id(settings: Settings, redis_client) -> None:
    async def moving(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/v1/boards")

    before = _requests_counted("/v1/moving", "302")
    async with ingest_client(settings, extra_get_routes={"/v1/moving": moving}) as http:
        response = await http.get("/v1/moving", headers={"X-Request-Id": "req-302"}, allow_redirects=False)

    assert response.status == 302
    assert response.headers["Location"] == "/v1/boards"
    assert response.headers["X-Request-Id"] == "req-302"
    assert _requests_counted("/v1/moving", "302") - before == 1


async def test_cancelled_request_is_counted_as_500(settings: Settings, redis_client) -> None:
    async def cancelled(_request: web.Request) -> web.Response:
        raise asyncio.CancelledError

    before = _requests_counted("/v1/cancelled", "500")
    async with ingest_client(settings, extra_get_routes={"/v1/cancelled": cancelled}) as http:
        with contextlib.suppress(aiohttp.ClientError):
            await http.get("/v1/cancelled", timeout=aiohttp.ClientTimeout(total=10))

    assert _requests_counted("/v1/cancelled", "500") - before == 1


async def test_401_returned_when_failure_count_fails(settings: Settings, redis_client, monkeypatch) -> None:
    """When Redis rejects the failure count (at maxmemory, say), the client still gets its 401 problem, counted as 401."""
    async def failing_record(_request: web.Request, _error: Exception) -> None:
        raise ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(ingest_middleware, "log", structlog.get_logger(ingest_middleware.__name__))
    before = _requests_counted("/v1/events", "401")
    async with ingest_client(settings) as http:
        monkeypatch.setattr(http.app[SECURITY_KEY].auth_failures, "record", failing_record)
        with capture_logs() as logs:
            response = await http.post("/v1/events", json=[], headers={"Authorization": "Bearer rsk_unknown", "X-Request-Id": "req-401"})
            body = await response.json(content_type=None)

    assert response.status == 401
    assert response.headers["X-Request-Id"] == "req-401"
    assert body["type"] == "urn:rankstream:problem:unauthorized"
    assert _requests_counted("/v1/events", "401") - before == 1
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["failed authentication not counted"]


async def test_each_request_logs_with_its_own_fields(settings: Settings, redis_client) -> None:
    """Records carry the request's id, method and path; a field bound by one request is gone from the next on the same connection."""
    logger = structlog.get_logger("tests.problem_responses")

    async def binding(_request: web.Request) -> web.Response:
        bind_to_unit_of_work(user_id="ada")
        logger.info("bound")
        return web.Response(text="ok")

    async def plain(_request: web.Request) -> web.Response:
        logger.info("plain")
        return web.Response(text="ok")

    configure_logging("info", "json", service="ingest")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    try:
        async with ingest_client(settings, extra_get_routes={"/v1/binding": binding, "/v1/plain": plain}) as http:
            first = await http.get("/v1/binding", headers={"X-Request-Id": "req-a"})
            second = await http.get("/v1/plain", headers={"X-Request-Id": "req-b"})
    finally:
        configure_logging("warning", "console")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [record for record in records if record["event"] in ("bound", "plain")]

    assert (first.status, second.status) == (200, 200)
    assert [(record["event"], record["request_id"], record["method"], record["path"], record.get("user_id")) for record in mine] == [
        ("bound", "req-a", "GET", "/v1/binding", "ada"),
        ("plain", "req-b", "GET", "/v1/plain", None),
    ]
