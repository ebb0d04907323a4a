"""Reading stream, consumer-group and memory figures from Redis for metrics and ``rankstream status``."""

from __future__ import annotations

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from shared.metrics import SNAPSHOT, GroupInfo, MemoryInfo, RedisSnapshot, policy_evicts_stream_keys
from shared.names import Names

log = structlog.get_logger(__name__)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def parse_group(raw: dict) -> GroupInfo:
    """Turn one XINFO GROUPS entry (keys as redis-py returns them) into a GroupInfo."""
    lag = raw.get("lag")
    return GroupInfo(
        name=_text(raw["name"]) or "",
        consumers=int(raw["consumers"]),
        pending_entries=int(raw["pending"]),
        lag_entries=None if lag is None else int(lag),
        last_delivered_id=_text(raw.get("last-delivered-id")) or "0-0",
    )


async def read_groups(client: redis.Redis, stream: str) -> list[GroupInfo]:
    """Return the stream's consumer groups, or [] when the stream does not exist yet."""
    try:
        raw_groups = await client.xinfo_groups(stream)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return []
        raise
    return sorted((parse_group(raw) for raw in raw_groups), key=lambda group: group.name)


async def read_memory(client: redis.Redis) -> MemoryInfo:
    """Return INFO memory figures, the evicted-keys count and the eviction policy.

    Managed Redis services often disable CONFIG; the policy is then read from
    INFO (Redis 7 and Valkey report ``maxmemory_policy`` there) or left None.
    """
    memory = await client.info("memory")
    stats = await client.info("stats")
    policy = memory.get("maxmemory_policy")
    if policy is None:
        try:
            reply = await client.config_get("maxmemory-policy")
            policy = _text(reply.get("maxmemory-policy"))
        except ResponseError:
            policy = None
    return MemoryInfo(
        used_memory_bytes=int(memory.get("used_memory", 0)),
        maxmemory_bytes=int(memory.get("maxmemory", 0)),
        fragmentation_ratio=float(memory.get("mem_fragmentation_ratio", 0.0)),
        evicted_keys=int(stats.get("evicted_keys", 0)),
        maxmemory_policy=_text(policy),
    )


async def read_snapshot(client: redis.Redis, names: Names) -> RedisSnapshot:
    """Read stream lengths, groups and memory with a few round trips."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(names.events_stream)
        pipe.xlen(names.dead_letter_stream)
        stream_length, dead_length = await pipe.execute()
    return RedisSnapshot(
        stream_length_entries=int(stream_length),
        dead_letter_length_entries=int(dead_length),
        groups=await read_groups(client, names.events_stream),
        memory=await read_memory(client),
    )


class RedisSampler:
    """Refresh the metrics snapshot from Redis and warn once per policy about risky eviction settings."""

    def __init__(self, client: redis.Redis, names: Names) -> None:
        self.client = client
        self.names = names
        self._warned_policy: str | None = None

    async def sample(self) -> RedisSnapshot:
        """Read a snapshot, publish it to ``/metrics`` and return it; Redis errors propagate."""
        snapshot = await read_snapshot(self.client, self.names)
        SNAPSHOT.snapshot = snapshot
        if snapshot.memory is not None:
            self.check_policy(snapshot.memory)
        return snapshot

    async def sample_at_start(self) -> None:
        """Sample once so a risky eviction policy is logged at startup; a failure is logged, not raised."""
        try:
            await self.sample()
        except Exception as error:  # noqa: BLE001 - the service retries Redis on its own; this check is advisory
            log.warning("redis sample failed", error=str(error) or type(error).__name__)

    def check_policy(self, memory: MemoryInfo) -> None:
        policy = memory.maxmemory_policy
        if not policy_evicts_stream_keys(policy) or policy == self._warned_policy:
            return
        self._warned_policy = policy
        log.warning(
            "redis may evict stream and board keys",
            maxmemory_policy=policy,
            maxmemory_bytes=memory.maxmemory_bytes,
            fix="set maxmemory-policy to noeviction (or a volatile-* policy) and size maxmemory from docs/operations.md",
        )
