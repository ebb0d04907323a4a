"""Ingest's 503 responses when it cannot promise durability: no append-only file, and no Redis at all."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import redis.asyncio as redis

from shared.embedded import EmbeddedValkey
from shared.names import Names
from shared.settings import Settings
from tests.faults.support import occurred_now, pushups
from tests.helpers import ingest_client, new_key

PROBLEM_TYPE = "urn:rankstream:problem:"


async def test_no_append_only_file_not_durable(settings: Settings, tmp_path: Path) -> None:
    """Without an append-only file the default mode responds 503 not-durable, and a retry later is a duplicate."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    await asyncio.to_thread(valkey.start)
    client = redis.Redis.from_url(valkey.url)
    try:
        await client.config_set("appendonly", "no")
        own = replace(settings, redis_url=valkey.url)
        headers = {"Authorization": f"Bearer {await new_key(own)}"}
        event = pushups("d1", "athlete-1", 12, occurred_now())

        async with ingest_client(own) as http:
            response = await http.post("/v1/events", json=[event], headers=headers)
            body = await response.json(content_type=None)
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert body["type"] == PROBLEM_TYPE + "not-durable"
            assert "enable appendonly or set RANKSTREAM_DURABILITY=relaxed" in body["detail"]
            # The append itself happened; only its durability was not confirmed.
            assert await client.xlen(Names(own.namespace).events_stream) == 1

            await client.config_set("appendonly", "yes")
            response = await http.post("/v1/events", json=[event], headers=headers)
            assert response.status == 200
            assert (await response.json())["results"] == [{"event_id": "d1", "status": "duplicate"}]
        assert await client.xlen(Names(own.namespace).events_stream) == 1
    finally:
        await client.aclose()
        await asyncio.to_thread(valkey.stop)


async def test_relaxed_mode_accepts_without_fsync(settings: Settings, tmp_path: Path) -> None:
    """The relaxed mode responds 202 without waiting for an append-only file."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    await asyncio.to_thread(valkey.start)
    client = redis.Redis.from_url(valkey.url)
    try:
        await client.config_set("appendonly", "no")
        own = replace(settings, redis_url=valkey.url, durability="relaxed")
        headers = {"Authorization": f"Bearer {await new_key(own)}"}

        async with ingest_client(own) as http:
            response = await http.post("/v1/events", json=[pushups("r1", "athlete-1", 12, occurred_now())], headers=headers)
            assert response.status == 202
            assert (await response.json())["results"][0]["status"] == "accepted"
        assert await client.xlen(Names(own.namespace).events_stream) == 1
    finally:
        await client.aclose()
        await asyncio.to_thread(valkey.stop)


async def test_redis_down_store_unavailable(settings: Settings, tmp_path: Path) -> None:
    """With Redis stopped, ingest responds 503 store-unavailable with Retry-After instead of a 500."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    await asyncio.to_thread(valkey.start)
    try:
        # Without rate limits, the append is the request's only Redis call, so only its retries delay the response.
        own = replace(settings, redis_url=valkey.url, rate_limit_per_minute=0, auth_failures_per_minute=0)
        headers = {"Authorization": f"Bearer {await new_key(own)}"}

        async with ingest_client(own) as http:
            await asyncio.to_thread(valkey.stop)
            response = await http.post("/v1/events", json=[pushups("u1", "athlete-1", 12, occurred_now())], headers=headers)
            body = await response.json(content_type=None)
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert body["type"] == PROBLEM_TYPE + "store-unavailable"
    finally:
        await asyncio.to_thread(valkey.stop)
