"""Per-key rate limits: the exact burst allowance, then 429 with a Retry-After that is true."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import redis.asyncio as redis
import structlog
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from services.ingest import middleware as ingest_middleware
from services.ingest.app import create_app
from shared.api_keys import KeyKind
from shared.boards import BoardRegistry, load_boards
from shared.database import create_pool
from shared.embedded import free_port
from shared.names import Names
from shared.settings import Settings
from services.ingest.rate_limit import RateLimiter
from services.ingest.security import SECURITY_KEY
from services.ingest.state import STATE_KEY
from tests.helpers import ingest_client, new_key


def event(event_id: str) -> dict:
    return {"event_id": event_id, "user_id": "u1", "metric": "pushups", "value": 20, "occurred_at": "2026-12-02T10:00:00Z"}


async def test_burst_then_429_with_retry_after(settings: Settings, redis_client) -> None:
    """Three requests pass, the fourth gets 429 and Retry-After 2; after 2 s one more passes."""
    limited = replace(settings, rate_limit_per_minute=30, rate_limit_burst_requests=3)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        started_s = time.monotonic()
        allowed = [(await http.post("/v1/events", json=[event(f"e{i}")], headers=headers)).status for i in range(3)]
        refused = await http.post("/v1/events", json=[event("e3")], headers=headers)
        elapsed_ms = (time.monotonic() - started_s) * 1000
        refused_body = await refused.json(content_type=None)
        retry_after_s = int(refused.headers["Retry-After"])
        await asyncio.sleep(retry_after_s)
        retried = await http.post("/v1/events", json=[event("e4")], headers=headers)

    # One token takes 2,000 ms to refill; the requests themselves refilled up to elapsed_ms of it.
    possible_retry_after_s = {math.ceil((2000 - elapsed_ms) / 1000), 2}
    assert allowed == [202, 202, 202]
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    assert retry_after_s in possible_retry_after_s
    assert refused_body["type"] == "urn:rankstream:problem:rate-limited"
    assert refused_body["detail"] == f"this key may make 30 requests per minute; retry after {retry_after_s} s"
    assert retried.status == 202
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 4


async def test_buckets_are_per_key(settings: Settings, redis_client) -> None:
    """One key using up its allowance leaves another key's untouched."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=1)
    first = await new_key(settings)
    second = await new_key(settings, KeyKind.DEVICE, "u1")
    async with ingest_client(limited) as http:
        statuses = [
            (await http.post("/v1/events", json=[event("a1")], headers={"Authorization": f"Bearer {first}"})).status,
            (await http.post("/v1/events", json=[event("a2")], headers={"Authorization": f"Bearer {first}"})).status,
            (await http.post("/v1/events", json=[event("b1")], headers={"Authorization": f"Bearer {second}"})).status,
        ]

    assert statuses == [202, 429, 202]


async def test_concurrent_requests_share_bucket(settings: Settings, redis_client) -> None:
    """Of 20 concurrent requests on a bucket of 5, exactly 5 pass: the script takes tokens atomically."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=5)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        responses = await asyncio.gather(*(http.post("/v1/events", json=[event(f"c{i}")], headers=headers) for i in range(20)))
        statuses = sorted(response.status for response in responses)

    assert statuses == [202] * 5 + [429] * 15
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 5


async def test_bucket_counts_down_and_expires(settings: Settings, redis_client) -> None:
    """Each take reports the whole tokens left; an empty bucket reports the wait and the bucket key expires."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=6, burst_requests=2)
    first = await limiter.take("key:1")
    second = await limiter.take("key:1")
    third = await limiter.take("key:1")
    peeked = await limiter.take("key:1", cost=0)

    assert (first.allowed, first.remaining) == (True, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    assert third.allowed is False
    assert 0 < third.retry_after_ms <= 10_000
    assert third.retry_after_s == math.ceil(third.retry_after_ms / 1000)
    assert peeked.allowed is False
    assert 0 < peeked.retry_after_ms <= third.retry_after_ms
    assert await redis_client.pttl(Names(settings.namespace).rate_limit_bucket("key:1")) > 0


async def test_zero_rate_turns_limiting_off(settings: Settings, redis_client) -> None:
    """RANKSTREAM_RATE_LIMIT_PER_MINUTE=0 lets every request through and stores no bucket."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=0, burst_requests=1)
    outcomes = [(await limiter.take("key:1")).allowed for _ in range(5)]

    assert outcomes == [True] * 5
    assert await redis_client.exists(Names(settings.namespace).rate_limit_bucket("key:1")) == 0


async def test_unreachable_redis_lets_requests_through(settings: Settings) -> None:
    """With Redis unreachable the limiter lets the request through instead of failing it."""
    # No retries, so the refused connection fails at once.
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=2)
    try:
        limiter = RateLimiter(client, Names(settings.namespace), per_minute=60, burst_requests=1)
        allowance = await limiter.check("key:1")
    finally:
        await client.aclose()

    assert allowance.allowed is True
    assert allowance.remaining == 0


async def test_rejected_requests_take_a_token(settings: Settings, redis_client) -> None:
    """A body that is not JSON, an event of another athlete and a rejected value each take a token, so the fourth request gets 429."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=3)
    device = await new_key(settings, KeyKind.DEVICE, "u1")
    headers = {"Authorization": f"Bearer {device}", "Content-Type": "application/json"}
    async with ingest_client(limited) as http:
        started_s = time.monotonic()
        not_json = await http.post("/v1/events", data=b"{not json", headers=headers)
        other_athlete = await http.post("/v1/events", json=[{**event("x1"), "user_id": "u2"}], headers=headers)
        negative = await http.post("/v1/events", json=[{**event("x2"), "value": -5}], headers=headers)
        rejected = await http.post("/v1/events", json=[event("x3")], headers=headers)
        elapsed_ms = (time.monotonic() - started_s) * 1000
        rejected_body = await rejected.json(content_type=None)

    assert [not_json.status, other_athlete.status, negative.status] == [400, 403, 200]
    assert rejected.status == 429
    assert rejected_body["type"] == "urn:rankstream:problem:rate-limited"
    # A token takes 60 s to refill; the requests refilled up to elapsed_ms of it.
    assert int(rejected.headers["Retry-After"]) in {math.ceil((60_000 - elapsed_ms) / 1000), 60}
    assert await redis_client.xlen(Names(settings.namespace).events_stream) == 0


async def test_limited_request_appends_nothing(settings: Settings, redis_client) -> None:
    """The append script rejects a request on an empty bucket before it writes the stream or a seen key."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=1)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    names = Names(settings.namespace)
    async with ingest_client(limited) as http:
        first = await http.post("/v1/events", json=[event("y1")], headers=headers)
        second = await http.post("/v1/events", json=[event("y2"), event("y3")], headers=headers)

    assert (first.status, second.status) == (202, 429)
    assert await redis_client.xlen(names.events_stream) == 1
    assert await redis_client.exists(names.seen_event("y2"), names.seen_event("y3")) == 0


async def test_oversized_and_unreadable_bodies_take_a_token(settings: Settings, redis_client) -> None:
    """A body over the size limit and a body that is not the gzip it claims each take a token."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=2, max_body_bytes=2048)
    key = await new_key(settings)
    # The server closes a connection whose body it could not read, so each request gets its own.
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"}
    async with ingest_client(limited) as http:
        oversized = await http.post("/v1/events", data=b"[" + b" " * 4096 + b"]", headers=headers)
        not_gzip = await http.post("/v1/events", data=b"[]", headers={**headers, "Content-Encoding": "gzip"})
        rejected = await http.post("/v1/events", json=[event("z1")], headers=headers)

    assert [oversized.status, not_gzip.status, rejected.status] == [413, 400, 429]
    assert await redis_client.xlen(Names(settings.namespace).events_stream) == 0


async def test_known_empty_bucket_skips_redis(settings: Settings, redis_client) -> None:
    """After Redis rejected a request, a 1,000-event request gets 429 with no call to Redis."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=1)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        state = http.app[STATE_KEY]
        limiter = http.app[SECURITY_KEY].rate_limiter
        started_s = time.monotonic()
        accepted = await http.post("/v1/events", json=[event("k1")], headers=headers)
        rejected_by_redis = await http.post("/v1/events", json=[event("k2")], headers=headers)
        calls_before = (state.appender.batcher.calls_sent, limiter.batcher.calls_sent)
        rejected_from_memory = await http.post("/v1/events", json=[event(f"k{i}") for i in range(3, 1003)], headers=headers)
        calls_after = (state.appender.batcher.calls_sent, limiter.batcher.calls_sent)
        elapsed_ms = (time.monotonic() - started_s) * 1000
        rejected_body = await rejected_from_memory.json(content_type=None)

    assert [accepted.status, rejected_by_redis.status, rejected_from_memory.status] == [202, 429, 429]
    assert calls_after == calls_before
    assert rejected_body["type"] == "urn:rankstream:problem:rate-limited"
    # A token takes 60 s to refill; the requests refilled up to elapsed_ms of it.
    assert math.ceil((60_000 - elapsed_ms) / 1000) <= int(rejected_from_memory.headers["Retry-After"]) <= 60
    assert await redis_client.xlen(Names(settings.namespace).events_stream) == 1


async def test_take_remembers_emptied_bucket(settings: Settings, redis_client) -> None:
    """A take that leaves less than one token makes the next take a rejection without a round trip."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=6, burst_requests=1)
    first = await limiter.take("key:9")
    calls_after_first = limiter.batcher.calls_sent
    second = await limiter.take("key:9")
    peeked = await limiter.take("key:9", cost=0)

    assert (first.allowed, first.remaining) == (True, 0)
    assert calls_after_first == 1
    assert limiter.batcher.calls_sent == 1
    assert second.allowed is False
    assert 9_000 < second.retry_after_ms <= 10_000
    assert peeked.allowed is False
    assert peeked.retry_after_ms <= second.retry_after_ms


async def test_peek_writes_nothing(settings: Settings, redis_client) -> None:
    """A take of cost 0 reports a full bucket and leaves no bucket key behind."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=6, burst_requests=3)
    peeked = await limiter.take("authfail:127.0.0.1", cost=0)

    assert (peeked.allowed, peeked.remaining) == (True, 3)
    assert await redis_client.exists(Names(settings.namespace).rate_limit_bucket("authfail:127.0.0.1")) == 0


async def test_rejections_listed_while_redis_down(settings: Settings) -> None:
    """With Redis unreachable, invalid and too-late events still get their rejections, and a valid event gets 503."""
    # No retries, so each refused connection fails at once.
    client = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=2)
    pool = await create_pool(settings.database_url, max_size=2)
    app = create_app(settings, client, pool, BoardRegistry(load_boards(settings.boards_file)))
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as http:
            invalid = await http.post("/v1/events", json=[{**event("r1"), "value": -5}], headers=headers)
            invalid_body = await invalid.json(content_type=None)
            too_late = await http.post("/v1/events", json=[{**event("r0"), "occurred_at": "2020-01-01T10:00:00Z"}], headers=headers)
            too_late_body = await too_late.json(content_type=None)
            valid = await http.post("/v1/events", json=[event("r2")], headers=headers)
            valid_body = await valid.json(content_type=None)
    finally:
        await pool.close()
        await client.aclose()

    assert invalid.status == 200
    assert [(result["event_id"], result["status"], result["field"]) for result in invalid_body["results"]] == [("r1", "rejected", "value")]
    assert too_late.status == 200
    assert [(result["event_id"], result["status"], result["field"]) for result in too_late_body["results"]] == [("r0", "rejected", "occurred_at")]
    assert valid.status == 503
    assert valid_body["type"] == "urn:rankstream:problem:store-unavailable"


async def test_remembered_rejections_log_at_debug(settings: Settings, redis_client, monkeypatch) -> None:
    """The rejection that found the bucket empty is logged at info, the rejections returned from memory at debug."""
    # A module logger used before another test reconfigured structlog keeps
    # the old processors, which capture_logs does not replace. A new one does.
    monkeypatch.setattr(ingest_middleware, "log", structlog.get_logger(ingest_middleware.__name__))
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=1)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        with capture_logs() as logs:
            statuses = [(await http.post("/v1/events", json=[event(f"l{i}")], headers=headers)).status for i in range(4)]

    limited_levels = [entry["log_level"] for entry in logs if entry["event"] == "request rate limited"]
    assert statuses == [202, 429, 429, 429]
    assert limited_levels == ["info", "debug", "debug"]


async def test_first_remembered_rejection_reported(settings: Settings, redis_client) -> None:
    """After a take that emptied the bucket, the first rejection from memory is not marked remembered, the next is."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=6, burst_requests=1)
    first_take = await limiter.take("key:5")
    first_rejection = await limiter.take("key:5")
    second_rejection = await limiter.take("key:5")

    assert first_take.allowed is True
    assert (first_rejection.allowed, first_rejection.remembered) == (False, False)
    assert (second_rejection.allowed, second_rejection.remembered) == (False, True)
    assert limiter.batcher.calls_sent == 1


async def test_remembered_wait_counts_from_the_send(settings: Settings, redis_client) -> None:
    """A wait learned from a call sent 0.9 s ago has at most 0.1 s left, and none once it has passed."""
    limiter = RateLimiter(redis_client, Names(settings.namespace), per_minute=6, burst_requests=1)
    limiter.note_empty("key:6", 1000, time.monotonic() - 0.9, rejected=True)
    limiter.note_empty("key:7", 1000, time.monotonic() - 1.5, rejected=True)
    rejection = limiter.known_empty("key:6")

    assert rejection is not None
    assert 0 < rejection.retry_after_ms <= 100
    assert limiter.known_empty("key:7") is None


async def test_known_empty_key_rejected_before_body(settings: Settings, redis_client) -> None:
    """A request on a bucket known empty gets 429 while its announced body has not been sent at all."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=1)
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        statuses = [(await http.post("/v1/events", json=[event(f"b{i}")], headers=headers)).status for i in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
        writer.write(
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        await writer.drain()
        # Without the early rejection the server would wait for the 100,000 bytes and this read would time out.
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        writer.close()

    assert statuses == [202, 429]
    assert status_line.startswith(b"HTTP/1.1 429 ")


async def test_opt_out_takes_a_token(settings: Settings, redis_client) -> None:
    """An opt-out change costs a token like any keyed request; the one over the limit gets 429 and changes nothing."""
    limited = replace(settings, rate_limit_per_minute=1, rate_limit_burst_requests=2)
    key = await new_key(settings, KeyKind.DEVICE, "opt-u1")
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(limited) as http:
        opted_out = await http.put("/v1/users/opt-u1/opt-out", headers=headers)
        opted_out_again = await http.put("/v1/users/opt-u1/opt-out", headers=headers)
        opted_in = await http.delete("/v1/users/opt-u1/opt-out", headers=headers)
        opted_in_body = await opted_in.json(content_type=None)

    assert [opted_out.status, opted_out_again.status, opted_in.status] == [200, 200, 429]
    assert opted_in_body["type"] == "urn:rankstream:problem:rate-limited"
    assert await redis_client.sismember(Names(settings.namespace).hidden_users, "opt-u1") == 1
