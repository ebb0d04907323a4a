"""Error responses: problem+json with a request id, never a stack trace or an exception's text."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.ingest.app import create_app
from shared.boards import BoardRegistry, load_boards
from shared.database import create_pool
from shared.redis_client import connect_redis
from shared.settings import Settings


async def test_unexpected_error_hides_details(settings: Settings, redis_client) -> None:
    """A handler that raises gets 500 problem+json naming only the request id."""
    secret = "rsk_" + "S" * 43

    async def failing(_request: web.Request) -> web.Response:
        raise RuntimeError(f"database password is hunter2, key {secret}")

    client = connect_redis(settings.redis_url)
    pool = await create_pool(settings.database_url, max_size=1)
    app = create_app(settings, client, pool, BoardRegistry(load_boards(settings.boards_file)))
    app.router.add_get("/v1/failing", failing)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as http:
            response = await http.get("/v1/failing", headers={"X-Request-Id": "req-1"})
            text = await response.text()
    finally:
        await pool.close()
        await client.aclose()

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
