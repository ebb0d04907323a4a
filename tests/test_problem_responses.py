"""Error responses: problem+json with a request id, never a stack trace or an exception's text."""

from __future__ import annotations

from aiohttp import web

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
