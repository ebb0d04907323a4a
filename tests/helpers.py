"""Helpers for tests that drive services over their public interfaces."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.ingest.app import create_app
from shared.api_keys import KeyKind, create_key
from shared.boards import BoardRegistry, load_boards
from shared.database import create_pool
from shared.redis_client import connect_redis
from shared.settings import Settings


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def new_key(settings: Settings, kind: KeyKind = KeyKind.SERVER, user_id: str | None = None) -> str:
    connection = await asyncpg.connect(settings.database_url)
    try:
        _key, text = await create_key(connection, "test", kind, user_id)
    finally:
        await connection.close()
    return text


@asynccontextmanager
async def ingest_client(settings: Settings, extra_get_routes: Mapping[str, Handler] | None = None, **app_options) -> AsyncIterator[TestClient]:
    """Serve the ingest app in-process on a free port and yield an HTTP client for it.

    ``extra_get_routes`` adds GET handlers by path, for tests of the app's middleware.
    """
    client = connect_redis(settings.redis_url)
    pool = await create_pool(settings.database_url, max_size=2)
    boards = BoardRegistry(load_boards(settings.boards_file))
    app = create_app(settings, client, pool, boards, **app_options)
    for path, handler in (extra_get_routes or {}).items():
        app.router.add_get(path, handler)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as http:
        yield http
    await pool.close()
    await client.aclose()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""

    async def accepting() -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await wait_for(accepting, timeout_s, f"port {port}")


async def wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(healthy, timeout_s, url)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
