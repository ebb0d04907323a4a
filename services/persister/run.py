"""Entry point of one persister process."""

from __future__ import annotations

import asyncio

import structlog

from services.persister.persister import Persister
from shared.database import create_pool
from shared.lifecycle import freeze_startup_objects, stop_on
from shared.probe_server import serve_probes
from shared.probes import consumer_probes
from shared.names import PERSISTER_GROUP, Names
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.stream import StreamConsumer, consumer_options, default_consumer_name

log = structlog.get_logger(__name__)


async def run_persister(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Consume the persister group until SIGINT/SIGTERM or until ``stop`` is set."""
    assert settings.redis_url is not None and settings.database_url is not None
    client = connect_redis(settings.redis_url)
    # No connection at start, so a persister starts while PostgreSQL is down and waits for it.
    pool = await create_pool(settings.database_url, min_size=0, max_size=2)
    consumer_name = settings.consumer_name or default_consumer_name("persister")
    structlog.contextvars.bind_contextvars(consumer=consumer_name)
    persister = Persister(pool)
    consumer = StreamConsumer(
        client, Names(settings.namespace), PERSISTER_GROUP, consumer_name, persister.handle,
        **consumer_options(settings, read_count=settings.persist_batch_size, batch_wait_ms=settings.persist_max_wait_ms),
    )
    stopper = stop_on(stop, consumer.stop)
    probes = consumer_probes(client, Names(settings.namespace), consumer.joined, pool)
    await probes.sampler.sample_at_start()
    log.info("persister started")
    freeze_startup_objects()
    try:
        async with serve_probes(probes, settings.metrics_host, settings.metrics_port):
            await consumer.run()
    finally:
        if stopper is not None:
            stopper.cancel()
        await pool.close()
        await client.aclose()
        log.info("persister stopped", events_inserted=persister.events_inserted)

