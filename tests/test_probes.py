"""The probe listener, readiness results, eviction warnings and the status report, in-process."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from services.status import collect_status, render_status
from shared.metrics import REGISTRY, policy_evicts_stream_keys, rejection_reason
from shared.names import Names
from shared.probe_server import parse_request_line, serve_probes
from shared.probes import Probes, event_check, redis_check
from shared.redis_stats import RedisSampler
from shared.settings import Settings
from shared.stream import StreamConsumer
from tests.helpers import wait_for


async def http_get(port: int, request: bytes) -> tuple[str, bytes]:
    """Send raw request bytes; return the status line and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def test_probe_listener_paths(settings: Settings, redis_client: redis.Redis) -> None:
    """The listener serves the three probe paths and rejects anything else with a reason."""
    joined = asyncio.Event()
    probes = Probes({"redis": redis_check(redis_client), "group": event_check(joined)})
    async with serve_probes(probes, "127.0.0.1", 0) as port:
        assert port is not None
        assert await http_get(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == ("HTTP/1.1 200 OK", b'{"status":"ok"}')
        status, body = await http_get(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert body == b'{"status":"not ready","checks":{"redis":"ok","group":"failed: not yet"}}'
        joined.set()
        status, body = await http_get(port, b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert body == b'{"status":"ready","checks":{"redis":"ok","group":"ok"}}'
        status, body = await http_get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert b"# TYPE rankstream_dead_letters_total counter" in body
        assert await http_get(port, b"GET /nope HTTP/1.1\r\n\r\n") == ("HTTP/1.1 404 Not Found", b"not found; use /metrics, /healthz or /readyz\n")
        assert await http_get(port, b"POST /metrics HTTP/1.1\r\n\r\n") == ("HTTP/1.1 405 Method Not Allowed", b"method POST is not allowed; use GET\n")
        assert await http_get(port, b"hello\r\n\r\n") == ("HTTP/1.1 400 Bad Request", b"malformed request line; send 'GET /metrics HTTP/1.1'\n")


async def test_probe_listener_off_without_port() -> None:
    """No port means no listener."""
    async with serve_probes(Probes({}), "127.0.0.1", None) as port:
        assert port is None


def test_request_line_parsing() -> None:
    """Request lines yield method and path without the query."""
    assert parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\n") == ("GET", "/metrics")
    assert parse_request_line(b"GET /metrics\r\n") is None
    assert parse_request_line(b"GET /metrics SPDY/3\r\n") is None


async def test_readiness_reports_failed_redis() -> None:
    """A Redis that cannot be reached makes readiness 503 naming the error type."""
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        answer = await Probes({"redis": redis_check(client)}).readiness()
    finally:
        await client.aclose()
    assert answer.status == 503
    assert answer.body == b'{"status":"not ready","checks":{"redis":"failed: ConnectionError"}}'


@pytest.mark.parametrize(
    ("policy", "evicts"),
    [("noeviction", False), ("volatile-lru", False), ("volatile-ttl", False), ("allkeys-lru", True), ("allkeys-lfu", True), ("allkeys-random", True), (None, False)],
)
def test_policy_eviction_risk(policy: str | None, evicts: bool) -> None:
    """Only allkeys-* policies can evict keys without a TTL."""
    assert policy_evicts_stream_keys(policy) is evicts


@pytest.mark.parametrize(
    ("field_path", "reason"),
    [("value", "value"), ("groups[3]", "groups"), ("occurred_at", "occurred_at"), ("$", "body"), ("evil<script>", "body"), ("", "body")],
)
def test_rejection_reason_label(field_path: str, reason: str) -> None:
    """Rejection labels are limited to the event's own field names."""
    assert rejection_reason(field_path) == reason


async def test_sampler_warns_on_allkeys_policy(settings: Settings, redis_client: redis.Redis) -> None:
    """An allkeys-* policy is logged once as a warning; noeviction is not."""
    sampler = RedisSampler(redis_client, Names(settings.namespace))
    await redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with capture_logs() as logs:
            first = await sampler.sample()
            await sampler.sample()
    finally:
        await redis_client.config_set("maxmemory-policy", "noeviction")
    warnings = [entry for entry in logs if entry["event"] == "redis may evict stream and board keys"]
    assert first.memory is not None
    assert first.memory.maxmemory_policy == "allkeys-lru"
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["maxmemory_policy"] == "allkeys-lru"
    with capture_logs() as logs:
        await sampler.sample()
    assert [entry for entry in logs if entry["event"] == "redis may evict stream and board keys"] == []


async def test_status_report_text(settings: Settings, redis_client: redis.Redis) -> None:
    """The status report lists groups with dead letters, stream length and board periods."""
    names = Names(settings.namespace)
    for i in range(3):
        await redis_client.xadd(names.events_stream, {b"event": b"{}"})
    await redis_client.xgroup_create(names.events_stream, "ranker", id="0")
    await redis_client.xgroup_create(names.events_stream, "persister", id="$")
    await redis_client.xreadgroup("ranker", "r1", {names.events_stream: ">"}, count=2)
    for group in ("ranker", "ranker", "persister"):
        await redis_client.xadd(names.dead_letter_stream, {b"source_id": b"1-0", b"group": group, b"event": b"", b"error": b"x"})
    await redis_client.zadd(names.board_scores("pushups-weekly", "2026-W49"), {"a": 1, "b": 2})
    await redis_client.zadd(names.board_scores("run-longest", "all"), {"a": 5})

    report = await collect_status(redis_client, names)
    text = render_status(report).splitlines()

    assert text[0] == f"namespace {settings.namespace}"
    assert text[1] == "events stream: 3 entries; dead-letter stream: 3 entries"
    assert text[3:6] == [
        "group      consumers  pending  lag  dead letters",
        "persister          0        0    0             1",
        "ranker             1        2    1             2",
    ]
    assert text[7].startswith("redis memory: used ")
    assert text[7].endswith(", policy noeviction")
    assert text[-3:] == [
        "board           period    athletes",
        "pushups-weekly  2026-W49         2",
        "run-longest     all              1",
    ]


async def test_dead_letter_and_batch_metrics(settings: Settings, redis_client: redis.Redis) -> None:
    """An undecodable entry adds exactly one dead letter; the batch metrics count every entry read."""
    names = Names(settings.namespace)
    group = "ranker"
    handled: list[str] = []

    async def handler(entries) -> None:
        handled.extend(entry.stream_id for entry in entries)

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"group": group}) or 0.0

    dead_before = sample("rankstream_dead_letters_total")
    entries_before = sample("rankstream_batch_size_entries_sum")
    await redis_client.xadd(names.events_stream, {b"event": b"not json"})
    consumer = StreamConsumer(redis_client, names, group, "c1", handler, block_ms=20, trim_interval_s=0)
    task = asyncio.create_task(consumer.run())
    try:
        async def joined() -> bool:
            return consumer.joined.is_set()

        await wait_for(joined, what="consumer joined")

        async def dead_lettered() -> bool:
            return await redis_client.xlen(names.dead_letter_stream) == 1

        await wait_for(dead_lettered, what="one dead letter")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=15)
    assert handled == []
    assert sample("rankstream_dead_letters_total") - dead_before == 1
    assert sample("rankstream_batch_size_entries_sum") - entries_before == 1
