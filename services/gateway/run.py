"""Entry point of one gateway process."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from websockets.asyncio.server import serve

from services.gateway.server import Gateway
from shared.boards import BoardRegistry, load_boards
from shared.lifecycle import stop_on
from shared.names import Names
from shared.redis_client import connect_redis
from shared.settings import Settings

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024


async def run_gateway(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve WebSockets until SIGINT/SIGTERM or until ``stop`` is set; close clients with 1001."""
    assert settings.redis_url is not None
    boards = BoardRegistry(load_boards(settings.boards_file))
    client = connect_redis(settings.redis_url)
    gateway = Gateway(client, Names(settings.namespace), boards)
    listener = asyncio.create_task(gateway.listen(), name="pubsub-listener")
    pusher = asyncio.create_task(gateway.push_loop(), name="push-loop")
    stopped = asyncio.Event()
    stopper = stop_on(stop, stopped.set)
    await gateway.probes.sampler.sample_at_start()
    try:
        await asyncio.wait_for(gateway.subscribed.wait(), timeout=30)
        async with serve(
            gateway.handle,
            settings.ws_host,
            settings.ws_port,
            process_request=gateway.process_request,
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
        ) as server:
            log.info("gateway listening", host=settings.ws_host, port=settings.ws_port, path="/v1/ws")
            await stopped.wait()
            # Leaving the block closes every connection with 1001 (going away).
            server.close()
            await asyncio.wait_for(server.wait_closed(), timeout=10)
    finally:
        if stopper is not None:
            stopper.cancel()
        for task in (listener, pusher):
            task.cancel()
        for task in (listener, pusher):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        log.info("gateway stopped", messages_sent=gateway.messages_sent)
