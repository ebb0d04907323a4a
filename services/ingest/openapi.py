"""GET /v1/openapi.json: the OpenAPI document of the whole HTTP API.

The document is ``services/ingest/openapi.json`` (``docs/openapi.json`` links to
it); a test compares its paths with the routes the app registers.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

OPENAPI_DOCUMENT = resources.files("services.ingest").joinpath("openapi.json").read_bytes()


async def get_openapi(_request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_DOCUMENT, content_type="application/json")
