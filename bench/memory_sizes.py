"""Measure Redis memory per item of each Rankstream key type on a throwaway embedded Valkey.

Run with ``python -m bench.memory_sizes``; it prints JSON. docs/operations.md
quotes its output. Ids follow common shapes: user ids of 15 characters
(``athlete-0000001``) and UUID event ids of 36 characters.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import redis.asyncio as redis

from shared.embedded import EmbeddedValkey
from shared.names import Names
from shared.schema import StreamEvent

ITEMS = 100_000
BATCH = 10_000
SEEN_SAMPLE = 1000


async def measure(url: str) -> dict:
    client = redis.Redis.from_url(url)
    names = Names("rs")
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    payload_bytes = 0
    try:
        for start in range(0, ITEMS, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                users = [f"athlete-{index:07d}" for index in range(start, start + BATCH)]
                pipe.zadd("scores", {user: rng.randint(1, 10**6) for user in users})
                pipe.hset("latest_at", mapping={user: 1_764_000_000_000 + index for index, user in enumerate(users)})
                for user in users:
                    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
                    payload = msgspec.json.encode(
                        StreamEvent(event_id=event_id, user_id=user, metric="pushups", value=rng.randint(1, 60), occurred_at=now, received_at=now)
                    )
                    payload_bytes = len(payload)
                    pipe.zadd("applied", {event_id: 1_764_000_000_000})
                    pipe.xadd("stream", {b"event": payload})
                    pipe.set(names.seen_event(event_id), "0123456789abcdef0123456789abcdef", ex=604800)
                await pipe.execute()
        sizes = {key: round(await client.memory_usage(key, samples=0) / ITEMS, 1) for key in ("scores", "applied", "latest_at", "stream")}
        seen_keys = [key async for key in client.scan_iter(match=names.seen_event("*"), count=5000)]
        sample = seen_keys[:SEEN_SAMPLE]
        seen_usage = sum([await client.memory_usage(key, samples=0) for key in sample]) / len(sample)

        # MEMORY USAGE leaves out the key's share of the main dictionary; deleting shows all of it.
        before = (await client.info("memory"))["used_memory"]
        for start in range(0, len(seen_keys), 5000):
            await client.delete(*seen_keys[start : start + 5000])
        after = (await client.info("memory"))["used_memory"]
        server = (await client.info("server")).get("valkey_version") or (await client.info("server")).get("redis_version")
    finally:
        await client.aclose()
    return {
        "server_version": server,
        "items": ITEMS,
        "bytes_per_athlete_scores": sizes["scores"],
        "bytes_per_applied_event_id": sizes["applied"],
        "bytes_per_athlete_latest_at": sizes["latest_at"],
        "bytes_per_stream_entry": sizes["stream"],
        "stream_event_payload_bytes": payload_bytes,
        "bytes_per_seen_key_memory_usage": round(seen_usage, 1),
        "bytes_per_seen_key_used_memory": round((before - after) / len(seen_keys), 1),
    }


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="rankstream-memory-"))
    valkey = EmbeddedValkey(directory / "valkey")
    try:
        url = valkey.start()
        print(json.dumps(asyncio.run(measure(url)), indent=2))
    finally:
        valkey.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
