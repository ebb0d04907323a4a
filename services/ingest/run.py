"""Entry point of one ingest process."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from services.ingest.app import create_app
from shared.board_store import BoardStore
from shared.database import create_pool
from shared.lifecycle import freeze_startup_objects, keep_running, stop_on
from shared.names import Names
from shared.redis_client import connect_redis
from shared.redis_stats import RedisSampler
from shared.settings import Settings

log = structlog.get_logger(__name__)


async def run_ingest(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve HTTP until SIGINT/SIGTERM or until ``stop`` is set, then drain requests for up to 10 s."""
    assert settings.redis_url is not None and settings.database_url is not None
    client = connect_redis(settings.redis_url, max_connections=256)
    pool = await create_pool(settings.database_url, min_size=1, max_size=5)
    # Board definitions come from PostgreSQL and are polled for changes.
    store = BoardStore(pool, seed_file=settings.boards_file)
    boards = await store.open()
    board_poller = asyncio.create_task(keep_running("boards-poll", store.run), name="boards-poll")
    runner = web.AppRunner(create_app(settings, client, pool, boards), access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True)
    await site.start()
    log.info("ingest listening", host=settings.http_host, port=settings.http_port)
    await RedisSampler(client, Names(settings.namespace)).sample_at_start()
    freeze_startup_objects()
    stopped = asyncio.Event()
    stopper = stop_on(stop, stopped.set)
    try:
        await stopped.wait()
    finally:
        if stopper is not None:
            stopper.cancel()
        board_poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await board_poller
        await runner.cleanup()
        await pool.close()
        await client.aclose()
        log.info("ingest stopped")
