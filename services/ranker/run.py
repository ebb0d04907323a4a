"""Entry point of one ranker process."""

from __future__ import annotations

import asyncio

import structlog

from services.ranker.ranker import Ranker
from shared.boards import BoardRegistry, load_boards
from shared.lifecycle import stop_on
from shared.names import RANKER_GROUP, Names
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.stream import StreamConsumer, consumer_options, default_consumer_name

log = structlog.get_logger(__name__)


async def run_ranker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Consume the ranker group until SIGINT/SIGTERM or until ``stop`` is set."""
    assert settings.redis_url is not None
    boards = BoardRegistry(load_boards(settings.boards_file))
    client = connect_redis(settings.redis_url)
    consumer_name = settings.consumer_name or default_consumer_name("ranker")
    structlog.contextvars.bind_contextvars(consumer=consumer_name)
    ranker = Ranker(client, Names(settings.namespace), boards)
    consumer = StreamConsumer(
        client, Names(settings.namespace), RANKER_GROUP, consumer_name, ranker.handle,
        **consumer_options(settings),
    )
    stopper = stop_on(stop, consumer.stop)
    log.info("ranker started", boards=len(boards.by_id))
    try:
        await consumer.run()
    finally:
        if stopper is not None:
            stopper.cancel()
        await client.aclose()
        log.info("ranker stopped", events_applied=ranker.events_applied)

