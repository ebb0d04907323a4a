"""Entry point of one ranker process."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.ranker.closer import PeriodCloser
from services.ranker.ranker import Ranker
from services.ranker.rebuild import rebuild_if_lost, watch_for_lost_boards
from shared.board_store import BoardStore
from shared.clock import Clock, system_clock
from shared.database import create_pool
from shared.lifecycle import freeze_startup_objects, keep_running, stop_on
from shared.probe_server import serve_probes
from shared.probes import consumer_probes
from shared.names import RANKER_GROUP, Names
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.stream import StreamConsumer, consumer_options, default_consumer_name

log = structlog.get_logger(__name__)


async def run_ranker(settings: Settings, *, stop: asyncio.Event | None = None, clock: Clock = system_clock) -> None:
    """Consume the ranker group until SIGINT/SIGTERM or until ``stop`` is set.

    Before consuming, rebuilds every board from PostgreSQL when Redis has lost
    its data. Board definitions are polled and period closing runs alongside.
    """
    assert settings.redis_url is not None and settings.database_url is not None
    client = connect_redis(settings.redis_url)
    pool = await create_pool(settings.database_url, min_size=1, max_size=3)
    names = Names(settings.namespace)
    store = BoardStore(pool, seed_file=settings.boards_file)
    boards = await store.open()
    consumer_name = settings.consumer_name or default_consumer_name("ranker")
    structlog.contextvars.bind_contextvars(consumer=consumer_name)

    # Redis restarted without its data: rebuild before serving anything.
    await rebuild_if_lost(client, pool, names, boards, consumer_name)

    ranker = Ranker(client, names, boards)
    consumer = StreamConsumer(
        client, names, RANKER_GROUP, consumer_name, ranker.apply,
        **consumer_options(settings),
    )
    closer = PeriodCloser(client, pool, names, boards, clock)
    helpers = [
        asyncio.create_task(keep_running("boards-poll", store.run), name="boards-poll"),
        asyncio.create_task(keep_running("period-closer", closer.run), name="period-closer"),
        asyncio.create_task(
            keep_running("lost-boards-watch", lambda: watch_for_lost_boards(client, pool, names, boards, consumer_name)),
            name="lost-boards-watch",
        ),
    ]
    stopper = stop_on(stop, consumer.stop)
    probes = consumer_probes(client, names, consumer.joined)
    await probes.sampler.sample_at_start()
    log.info("ranker started", boards=len(boards))
    freeze_startup_objects()
    try:
        async with serve_probes(probes, settings.metrics_host, settings.metrics_port):
            await consumer.run()
    finally:
        if stopper is not None:
            stopper.cancel()
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
        await client.aclose()
        log.info("ranker stopped", events_applied=ranker.events_applied, periods_closed=closer.periods_closed)
