"""The gateway's probe paths, served before the WebSocket upgrade, and its push counters."""

from __future__ import annotations

from collections.abc import Collection

import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State

from shared.metrics import WEBSOCKET_MESSAGES_DROPPED, WEBSOCKET_MESSAGES_SENT
from shared.names import Names
from shared.probes import PROBE_PATHS, Probes, event_check, redis_check
from shared.redis_stats import RedisSampler


def gateway_probes(client: redis.Redis, names: Names, subscribed) -> Probes:
    """Return the gateway's probes: ready when Redis replies and the rank-changes channel is subscribed."""
    return Probes({"redis": redis_check(client), "pubsub": event_check(subscribed)}, RedisSampler(client, names))


async def probe_response(probes: Probes, connection: ServerConnection, request: Request) -> Response | None:
    """Return the HTTP response for a probe path, or None when ``request`` is not for one."""
    path = request.path.split("?", 1)[0]
    if path not in PROBE_PATHS:
        return None
    answer = await probes.answer(path)
    assert answer is not None
    response = connection.respond(answer.status, "")
    # respond() set both headers for its empty body, and websockets headers are
    # multi-valued, so they are removed before the real values are set.
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = answer.content_type
    response.headers["Content-Length"] = str(len(answer.body))
    response.body = answer.body
    return response


def count_broadcast(connections: Collection[ServerConnection]) -> None:
    """Count one broadcast: sent to open connections, dropped for those already closing.

    ``websockets.broadcast`` skips connections that are not open without raising,
    so they are counted here, before the call.
    """
    open_count = sum(1 for connection in connections if connection.protocol.state is State.OPEN)
    WEBSOCKET_MESSAGES_SENT.inc(open_count)
    if open_count < len(connections):
        WEBSOCKET_MESSAGES_DROPPED.inc(len(connections) - open_count)
