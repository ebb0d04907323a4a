"""Redis client construction with the retry policy every service shares."""

from __future__ import annotations

import socket

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


# A connection dropped without a FIN or RST (a pulled cable, a dead NAT entry)
# sends nothing back, so reads would wait for ever. TCP keepalive probes find
# such a peer after about 10 + 3 * 5 = 25 s of silence, on Linux.
KEEPALIVE_OPTIONS = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 10),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}

# Above the longest blocking command a service sends (XREADGROUP BLOCK is at
# most 60 s, RANKSTREAM_BLOCK_MS), so only a dead connection times out.
SOCKET_TIMEOUT_S = 75.0


def connect_redis(url: str, *, max_connections: int = 64) -> redis.Redis:
    """Return a client for ``url`` that reconnects with jittered backoff after connection errors."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries=8)
    return redis.Redis.from_url(
        url,
        max_connections=max_connections,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=5,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE_OPTIONS,
        health_check_interval=15,
        decode_responses=False,
    )
