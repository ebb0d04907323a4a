"""Ranker and persister alone: how fast 1, 2 and 4 consumers empty a pre-filled stream.

Each run uses its own key namespace. The consumers start on an empty stream and
report ready. The stream is then filled aside, given the group, and renamed
over the live key in one step. Every consumer therefore starts on the full
backlog at the same instant, and the clock starts there.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import msgspec
import redis.asyncio as redis

from bench.cluster import ROOT, Cluster, wait_ready
from bench.common import METRIC, wait_drained
from shared.embedded import free_port
from shared.names import Names
from shared.schema import StreamEvent

READY_TIMEOUT_S = 60.0
FILL_BATCH = 5000


async def _fill_aside(client: redis.Redis, key: str, namespace: str, entries: int, athletes: int) -> None:
    now = datetime.now(timezone.utc)
    encoder = msgspec.json.Encoder()
    for start in range(0, entries, FILL_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + FILL_BATCH, entries)):
                event = StreamEvent(
                    event_id=f"{namespace}-{n}", user_id=f"u{n % athletes}", metric=METRIC, value=1 + n % 50, occurred_at=now, received_at=now
                )
                pipe.xadd(key, {b"event": encoder.encode(event)})
            await pipe.execute()


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _remove_namespace(client: redis.Redis, namespace: str) -> None:
    batch = []
    async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


async def drain_run(cluster: Cluster, *, service: str, consumers: int, entries: int, athletes: int, log_dir, timeout_s: float) -> dict:
    """Start ``consumers`` processes of ``service``, hand them ``entries`` at once, time until all are acknowledged."""
    namespace = f"bench-{service}-{consumers}-{int(time.time()) % 100000}"
    names = Names(namespace)
    group = service
    client = redis.Redis.from_url(cluster.redis_url)
    processes: list[subprocess.Popen] = []
    try:
        await client.xgroup_create(names.events_stream, group, id="0", mkstream=True)
        # The marker a ranker writes once its boards hold every persisted event; without it a starting
        # ranker would rebuild this empty namespace from the whole events table.
        await client.set(names.boards_built, "1")
        ports = [free_port() for _ in range(consumers)]
        for index, port in enumerate(ports):
            log = open(log_dir / f"{namespace}-{index}.log", "ab")  # noqa: SIM115 - the child process owns it
            env = cluster.child_env(RANKSTREAM_NAMESPACE=namespace, RANKSTREAM_METRICS_PORT=str(port), RANKSTREAM_LOG_LEVEL="warning")
            processes.append(subprocess.Popen([sys.executable, "-m", "services", service], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
            log.close()
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{port}/readyz", READY_TIMEOUT_S) for port in ports))

        aside = f"{namespace}:{{events}}:aside"
        fill_started = time.perf_counter()
        await _fill_aside(client, aside, namespace, entries, athletes)
        fill_s = time.perf_counter() - fill_started
        await client.xgroup_create(aside, group, id="0")
        started = time.perf_counter()
        await client.rename(aside, names.events_stream)
        finished = await wait_drained(client, names.events_stream, (group,), timeout_s)
    finally:
        _stop(processes)
        await _remove_namespace(client, namespace)
        await client.aclose()
    return {
        "service": service,
        "consumers": consumers,
        "entries": entries,
        "fill_s": round(fill_s, 2),
        "drained": finished is not None,
        "seconds": None if finished is None else round(finished - started, 2),
        "events_per_s": None if finished is None else round(entries / (finished - started), 1),
    }
