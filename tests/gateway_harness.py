"""Running the gateway and the ranker in the test's event loop, and a small WebSocket test client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

from services.gateway.config import GatewayConfig
from services.gateway.run import run_gateway
from services.ranker.run import run_ranker
from shared.names import Names
from shared.schema import BoardUpdate, board_update_decoder
from shared.settings import Settings
from tests.helpers import wait_for, wait_for_port

RECEIVE_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def running(coroutine_factory: Callable[[asyncio.Event], Any], name: str) -> AsyncIterator[asyncio.Task]:
    """Run a service coroutine with a stop event; set it and await the task on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(coroutine_factory(stop), name=name)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@contextlib.asynccontextmanager
async def gateway(settings: Settings, **config: Any) -> AsyncIterator[str]:
    """Serve the gateway in-process with ``config`` overrides; yield its WebSocket URL."""
    gateway_config = replace(GatewayConfig(), **config)
    async with running(lambda stop: run_gateway(settings, stop=stop, config=gateway_config), "gateway") as task:
        await wait_for_port(settings.ws_port)
        assert not task.done(), task
        yield f"ws://127.0.0.1:{settings.ws_port}/v1/ws"


@contextlib.asynccontextmanager
async def ranker(settings: Settings) -> AsyncIterator[None]:
    async with running(lambda stop: run_ranker(settings, stop=stop), "ranker"):
        yield


async def gateway_stats(port: int) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v1/gateway/stats") as response:
        assert response.status == 200
        return await response.json()


def current_week() -> str:
    """Return the current ISO week period id, as pushups-weekly names it."""
    iso = datetime.now(timezone.utc).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def event(event_id: str, user_id: str, value: float, metric: str = "pushups", **extra: Any) -> dict:
    occurred = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return {"event_id": event_id, "user_id": user_id, "metric": metric, "value": value, "occurred_at": occurred, **extra}


async def post(http, key: str, events: list[dict] | dict) -> None:
    """Post events through the ingest app and check every one was accepted."""
    response = await http.post("/v1/events", json=events, headers={"Authorization": f"Bearer {key}"})
    body = await response.json()
    assert response.status == 202, body
    assert {result["status"] for result in body["results"]} == {"accepted"}, body


class Published:
    """The rank-change messages published while the block runs, read from the real channel."""

    def __init__(self, settings: Settings) -> None:
        from shared.redis_client import connect_redis

        self.client = connect_redis(settings.redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.channel = Names(settings.namespace).rank_changes_channel
        self.updates: list[BoardUpdate] = []

    async def __aenter__(self) -> Published:
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()

    async def collect(self, seq: int, timeout_s: float = RECEIVE_TIMEOUT_S) -> list[BoardUpdate]:
        """Return every update received until one numbered ``seq`` arrives."""
        deadline = time.monotonic() + timeout_s
        while not self.updates or self.updates[-1].seq < seq:
            assert time.monotonic() < deadline, f"timed out waiting for seq {seq}; got {self.updates}"
            message = await self.pubsub.get_message(timeout=0.5)
            if message is not None:
                self.updates.append(board_update_decoder.decode(message["data"]))
        return self.updates


class WsClient:
    """A test WebSocket client that reads JSON messages with a timeout."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.welcome: dict | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **options: Any) -> AsyncIterator[WsClient]:
        async with websockets.connect(url, **options) as connection:
            client = cls(connection)
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome"
            yield client

    async def send(self, message: dict) -> None:
        await self.connection.send(json.dumps(message))

    async def recv(self, timeout_s: float = RECEIVE_TIMEOUT_S) -> dict:
        return json.loads(await asyncio.wait_for(self.connection.recv(), timeout_s))

    async def subscribe(self, subscription_id: str, board: str = "pushups-weekly", **fields: Any) -> dict:
        """Subscribe and return the first snapshot."""
        await self.send({"type": "subscribe", "id": subscription_id, "board": board, **fields})
        snapshot = await self.recv()
        assert snapshot["type"] == "snapshot", snapshot
        assert snapshot["id"] == subscription_id
        return snapshot

    async def recv_until(self, predicate: Callable[[dict], bool], timeout_s: float = RECEIVE_TIMEOUT_S) -> list[dict]:
        """Return every message up to and including the first that matches ``predicate``."""
        deadline = time.monotonic() + timeout_s
        received = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout_s} s; received {received}")
            try:
                message = await self.recv(remaining)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout_s} s; received {received}") from None
            received.append(message)
            if predicate(message):
                return received


async def wait_seq(redis_client, settings: Settings, board_key: str, period: str, seq: int) -> None:
    """Wait until the ranker has applied ``seq`` updates to a board period."""
    key = Names(settings.namespace).board_seq(board_key, period)

    async def reached() -> bool:
        return int(await redis_client.get(key) or 0) >= seq

    await wait_for(reached, what=f"{key} to reach {seq}")
