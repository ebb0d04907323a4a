"""The live page: static HTML, JavaScript and CSS served by the ingest app, plus the WebSocket URL it connects to.

No build step: the files under ``static/`` are served as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from shared.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
WS_PATH = "/v1/ws"
SETTINGS_KEY = web.AppKey("live_page_settings", Settings)

# The page may be served from another host name than the gateway binds to, so
# the default URL takes the host from the request and the port from the settings.
PUBLIC_URL_VARIABLE = "RANKSTREAM_WS_PUBLIC_URL"


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def websocket_url(request: web.Request, settings: Settings, public_url: str | None) -> str:
    """Return the gateway URL for a browser that loaded the page through ``request``."""
    if public_url:
        return public_url
    scheme = "wss" if request.scheme == "https" else "ws"
    host = request.url.host or settings.ws_host
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.ws_port}{WS_PATH}"


async def live_config(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    url = websocket_url(request, settings, os.environ.get(PUBLIC_URL_VARIABLE) or None)
    return web.json_response({"ws_url": url}, headers={"Cache-Control": "no-cache"})


def add_live_page_routes(app: web.Application, settings: Settings) -> None:
    """Serve the live page at ``/``, its files under ``/live/`` and its settings at ``/v1/live/config``."""
    app[SETTINGS_KEY] = settings
    app.router.add_get("/", index)
    app.router.add_get("/v1/live/config", live_config)
    app.router.add_static("/live/", STATIC_DIR, append_version=False)
