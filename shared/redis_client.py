"""Redis client construction with the retry policy every service shares."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect_redis(url: str, *, max_connections: int = 64) -> redis.Redis:
    """Return a client for ``url`` that reconnects with jittered backoff after connection errors."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries=8)
    return redis.Redis.from_url(
        url,
        max_connections=max_connections,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=5,
        health_check_interval=15,
        decode_responses=False,
    )
