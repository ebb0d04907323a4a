"""Entry point of one gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog
from websockets.asyncio.server import serve

from services.gateway.config import GatewayConfig
from services.gateway.listener import connect_pubsub_client
from services.gateway.protocol import CloseCode
from services.gateway.server import WS_PATH, Gateway
from shared.board_store import BoardStore
from shared.boards import BoardRegistry, load_boards
from shared.database import create_pool
from shared.lifecycle import freeze_startup_objects, keep_running, stop_on
from shared.names import Names
from shared.redis_client import connect_redis
from shared.settings import Settings

log = structlog.get_logger(__name__)

SUBSCRIBE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0


async def run_gateway(settings: Settings, *, stop: asyncio.Event | None = None, config: GatewayConfig | None = None) -> None:
    """Serve WebSockets until SIGINT/SIGTERM or until ``stop`` is set; close clients with 1001.

    ``config`` defaults to the ``RANKSTREAM_WS_*`` environment variables.
    """
    assert settings.redis_url is not None
    config = config if config is not None else GatewayConfig.from_env()
    if config.jwt_secret is None:
        log.warning("websocket read access is open", hint="set RANKSTREAM_WS_JWT_SECRET to require signed tokens")
    # Board definitions come from PostgreSQL when it is configured, so boards
    # created over the admin API can be followed; else from the boards file.
    pool = store = None
    if settings.database_url is not None:
        pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        store = BoardStore(pool, seed_file=settings.boards_file)
        boards = await store.open()
    else:
        boards = BoardRegistry(load_boards(settings.boards_file))
    client = connect_redis(settings.redis_url)
    names = Names(settings.namespace)
    pubsub_client = connect_pubsub_client(settings.redis_url, f"{settings.namespace}:gateway:{os.getpid()}")
    gateway = Gateway(client, pubsub_client, names, boards, config)
    listener = asyncio.create_task(keep_running("pubsub-listener", gateway.listener.run), name="pubsub-listener")
    pusher = asyncio.create_task(keep_running("push-loop", gateway.pusher.run), name="push-loop")
    tasks = [listener, pusher]
    if store is not None:
        tasks.append(asyncio.create_task(keep_running("boards-poll", store.run), name="boards-poll"))
    stopped = asyncio.Event()
    stopper = stop_on(stop, stopped.set)
    await gateway.probes.sampler.sample_at_start()
    freeze_startup_objects()
    try:
        await asyncio.wait_for(gateway.subscribed.wait(), timeout=SUBSCRIBE_TIMEOUT_S)
        async with serve(
            gateway.handle,
            settings.ws_host,
            settings.ws_port,
            process_request=gateway.process_request,
            max_size=config.max_message_bytes,
            max_queue=16,
            write_limit=config.high_water_bytes,
            ping_interval=config.ping_interval_s,
            ping_timeout=config.ping_timeout_s,
            close_timeout=config.close_timeout_s,
            reuse_port=config.reuse_port,
        ) as server:
            log.info(
                "gateway listening",
                host=settings.ws_host,
                port=settings.ws_port,
                path=WS_PATH,
                gateway=gateway.gateway_id,
                reuse_port=config.reuse_port,
                max_updates_per_s=config.max_updates_per_s,
            )
            await stopped.wait()
            # Stop accepting, then close every connection with 1001 (going away).
            server.close(close_connections=True)
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                log.warning("connections did not close in time", timeout_s=SHUTDOWN_TIMEOUT_S, code=int(CloseCode.GOING_AWAY))
    finally:
        if stopper is not None:
            stopper.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pool is not None:
            await pool.close()
        await pubsub_client.aclose()
        await client.aclose()
        log.info("gateway stopped", gateway=gateway.gateway_id, messages_sent=gateway.stats.messages_sent)
