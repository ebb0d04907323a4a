"""Phases that drive the public HTTP and WebSocket APIs: ingest, end to end, and POST-to-push latency."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import time
from pathlib import Path

import psutil

import redis.asyncio as redis
import websockets

from bench.cluster import Cluster, extra_service
from bench.common import BOARD, Clock, event_json, percentiles_ms, wait_drained
from bench.http_load import ConnectionPool, Results, build_request, closed_loop, send_one
from shared.embedded import free_port
from shared.names import CONSUMER_GROUPS, Names


TICK_S = 0.01
PROBE_INTERVAL_S = 0.05
PROBE_USER = "bench-probe"


def _post(cluster: Cluster, body: bytes) -> bytes:
    headers = {"Authorization": f"Bearer {cluster.api_key}", "Content-Type": "application/json"}
    return build_request("POST", "/v1/events", body, headers)


async def single_events(cluster: Cluster, *, concurrency: int, duration_s: float, athletes: int, tag: str) -> dict:
    """POST one event per request from ``concurrency`` closed-loop connections."""
    clock = Clock()

    def make(number: int) -> bytes:
        body = event_json(f"{tag}-{number}", f"u{number % athletes}", 1 + number % 50, clock.now_text())
        return _post(cluster, body.encode())

    results = await closed_loop("127.0.0.1", cluster.http_port, make, concurrency=concurrency, duration_s=duration_s, max_requests=10_000_000)
    return {
        "concurrency": concurrency,
        "duration_s": round(results.elapsed_s, 2),
        "requests": len(results.latencies_s),
        "accepted_requests": results.statuses.get(202, 0),
        "statuses": {str(status): count for status, count in sorted(results.statuses.items())},
        "errors": results.errors,
        "requests_per_s": round(results.ok / results.elapsed_s, 1),
        **percentiles_ms(results.latencies_s),
    }


async def single_events_relaxed(cluster: Cluster, *, concurrency: int, duration_s: float, athletes: int, log_dir: Path) -> dict:
    """Repeat :func:`single_events` against an extra ingest process that does not wait for the fsync.

    The difference to the default run is the cost of ``WAITAOF`` per request.
    """
    port = free_port()
    ready = f"http://127.0.0.1:{port}/readyz"
    async with extra_service(cluster, "ingest", ready, log_dir / "ingest-relaxed.log", RANKSTREAM_HTTP_PORT=str(port), RANKSTREAM_DURABILITY="relaxed") as process:
        relaxed = dataclasses.replace(cluster, http_port=port)
        cpu_before = psutil.Process(process.pid).cpu_times()
        result = await single_events(relaxed, concurrency=concurrency, duration_s=duration_s, athletes=athletes, tag="relaxed")
        cpu_after = psutil.Process(process.pid).cpu_times()
    used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    result["cpu_cores"] = {"ingest": round(used / result["duration_s"], 2)}
    return result


async def push_latency_paced(cluster: Cluster, *, updates_per_s: int, rate_per_s: int, duration_s: float, athletes: int, log_dir: Path) -> dict:
    """Repeat :func:`push_latency` through an extra gateway that pushes up to ``updates_per_s`` per subscription."""
    port = free_port()
    ready = f"http://127.0.0.1:{port}/readyz"
    async with extra_service(
        cluster, "gateway", ready, log_dir / "gateway-paced.log", RANKSTREAM_WS_PORT=str(port), RANKSTREAM_WS_MAX_UPDATES_PER_S=str(updates_per_s)
    ):
        paced = dataclasses.replace(cluster, ws_port=port)
        result = await push_latency(paced, rate_per_s=rate_per_s, duration_s=duration_s, athletes=athletes, tag=f"paced{updates_per_s}")
    result["max_updates_per_s"] = updates_per_s
    return result


async def batches_end_to_end(
    cluster: Cluster, *, batch_size: int, concurrency: int, duration_s: float, athletes: int, drain_timeout_s: float, tag: str = "b"
) -> dict:
    """POST batches as fast as ingest takes them, then wait until ranker and persister finished every entry.

    Ingest events/s counts the posting window; end-to-end events/s divides the
    same events by the time until both groups had acknowledged the last one.
    Backlog (lag plus pending) is sampled each second to show whether it grew.
    Event ids start with ``tag``, so each run of the phase posts new events.
    """
    clock = Clock()
    stream = Names("rs").events_stream
    client = redis.Redis.from_url(cluster.redis_url)
    backlog_samples: list[tuple[float, int]] = []

    def make(number: int) -> bytes:
        now = clock.now_text()
        base = number * batch_size
        items = ",".join(event_json(f"{tag}-{base + i}", f"u{(base + i) % athletes}", 1 + (base + i) % 50, now) for i in range(batch_size))
        return _post(cluster, f"[{items}]".encode())

    async def sample_backlog(started: float) -> None:
        while True:
            groups = await client.xinfo_groups(stream)
            worst = max((int(g.get("lag") or 0) + int(g["pending"]) for g in groups), default=0)
            backlog_samples.append((round(time.perf_counter() - started, 2), worst))
            await asyncio.sleep(1.0)

    commands_before = await client.info("commandstats")
    started = time.perf_counter()
    sampler = asyncio.create_task(sample_backlog(started))
    try:
        results = await closed_loop("127.0.0.1", cluster.http_port, make, concurrency=concurrency, duration_s=duration_s, max_requests=10_000_000)
        drained_at = await wait_drained(client, stream, CONSUMER_GROUPS, drain_timeout_s)
        commands_after = await client.info("commandstats")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await client.aclose()
    events = results.statuses.get(202, 0) * batch_size
    return {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "post_window_s": round(results.elapsed_s, 2),
        "events_accepted": events,
        "statuses": {str(status): count for status, count in sorted(results.statuses.items())},
        "errors": results.errors,
        "ingest_events_per_s": round(events / results.elapsed_s, 1),
        "drained": drained_at is not None,
        "end_to_end_s": None if drained_at is None else round(drained_at - results.started_s, 2),
        "end_to_end_events_per_s": None if drained_at is None else round(events / (drained_at - results.started_s), 1),
        "backlog_samples": backlog_samples,
        "valkey_commands": command_costs(commands_before, commands_after, events),
        **{f"request_{key}": value for key, value in percentiles_ms(results.latencies_s).items()},
    }


async def push_latency(cluster: Cluster, *, rate_per_s: int, duration_s: float, athletes: int, tag: str) -> dict:
    """Post at a fixed open-loop rate and time each probe event from its POST to the push showing it.

    Every ``TICK_S`` one POST carries ``rate_per_s * TICK_S`` load events. Every
    ``PROBE_INTERVAL_S`` a separate single-event POST adds 1 to the probe
    athlete's score. A WebSocket subscribed to that athlete records when a push
    first shows each new score. A push that covers several probe events counts
    for each of them, timed from its own POST.
    """
    clock = Clock()
    pool = ConnectionPool("127.0.0.1", cluster.http_port, max_size=256)
    load = Results()
    probes_sent: dict[int, float] = {}
    latencies_s: list[float] = []
    tasks: set[asyncio.Task] = set()
    per_tick = max(1, round(rate_per_s * TICK_S))
    probe_user = f"{PROBE_USER}-{tag}"
    numbers = itertools.count()
    rng = random.Random(rate_per_s)

    def spawn(raw: bytes, results: Results) -> None:
        task = asyncio.create_task(send_one(pool, raw, results))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async with websockets.connect(f"ws://127.0.0.1:{cluster.ws_port}/v1/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "id": "probe", "board": BOARD, "top": 10, "user": probe_user}))
        seen_score = 0

        async def receive() -> None:
            nonlocal seen_score
            async for frame in ws:
                received = time.perf_counter()
                message = json.loads(frame)
                standing = message.get("standing") if message.get("type") in ("update", "snapshot") else None
                if not standing:
                    continue
                score = int(standing["score"])
                for number in range(seen_score + 1, score + 1):
                    sent = probes_sent.pop(number, None)
                    if sent is not None:
                        latencies_s.append(received - sent)
                seen_score = max(seen_score, score)

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_tick = start
        next_probe = start + PROBE_INTERVAL_S
        probe_number = 0
        probe_results = Results()
        load.started_s = time.perf_counter()
        while loop.time() - start < duration_s:
            now = loop.time()
            if now >= next_probe:
                probe_number += 1
                raw = _post(cluster, event_json(f"{tag}-probe-{probe_number}", probe_user, 1, clock.now_text()).encode())
                probes_sent[probe_number] = time.perf_counter()
                spawn(raw, probe_results)
                next_probe += PROBE_INTERVAL_S
            if now >= next_tick:
                first = next(numbers) * per_tick
                text = clock.now_text()
                items = ",".join(event_json(f"{tag}-{first + i}", f"u{rng.randrange(athletes)}", rng.randint(1, 50), text) for i in range(per_tick))
                spawn(_post(cluster, f"[{items}]".encode()), load)
                next_tick += TICK_S
            await asyncio.sleep(max(0.0, min(next_tick, next_probe) - loop.time()))
        load.finished_s = time.perf_counter()
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)

        # Give the last pushes up to two seconds to arrive.
        deadline = loop.time() + 2.0
        while probes_sent and loop.time() < deadline:
            await asyncio.sleep(0.05)
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    pool.close()
    offered = load.ok * per_tick
    return {
        "rate_per_s": rate_per_s,
        "duration_s": duration_s,
        "events_per_post": per_tick,
        "achieved_events_per_s": round(offered / load.elapsed_s, 1),
        "load_statuses": {str(status): count for status, count in sorted(load.statuses.items())},
        "load_errors": load.errors,
        "probes": probe_number,
        "probes_pushed": len(latencies_s),
        "probes_missing": len(probes_sent),
        **percentiles_ms(latencies_s),
        **{f"post_{key}": value for key, value in percentiles_ms(load.latencies_s).items()},
    }


def command_costs(before: dict, after: dict, events: int, top: int = 8) -> list[dict]:
    """Return the commands Valkey spent most time in between two INFO commandstats, per event.

    A script's time includes the commands it calls, which also appear on their own rows.
    """
    costs = []
    for name, stats in after.items():
        earlier = before.get(name, {})
        calls = int(stats["calls"]) - int(earlier.get("calls", 0))
        usec = int(stats["usec"]) - int(earlier.get("usec", 0))
        if calls > 0 and events > 0:
            command = name.removeprefix("cmdstat_").upper()
            costs.append({"command": command, "calls_per_event": round(calls / events, 3), "us_per_event": round(usec / events, 2)})
    costs.sort(key=lambda cost: cost["us_per_event"], reverse=True)
    return costs[:top]


async def settle(cluster: Cluster, timeout_s: float) -> bool:
    """Wait until both groups finished the events of the previous phase, so phases do not overlap."""
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return await wait_drained(client, Names("rs").events_stream, CONSUMER_GROUPS, timeout_s) is not None
    finally:
        await client.aclose()


