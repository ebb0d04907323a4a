"""The four services as separate processes on real servers, driven over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import asyncpg
import websockets

from shared.settings import Settings
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes


async def recv_json(ws, timeout_s: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def test_pipeline_end_to_end(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Posted events reach the board, the WebSocket, the read API and PostgreSQL exactly once."""
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{settings.http_port}"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    occurred = now.isoformat()

    with service_processes(settings, tmp_path / "logs") as services:
        for service in ("ingest", "ranker", "persister", "gateway"):
            services.start(service, service)
        await wait_healthy(f"{base}/healthz")
        await wait_healthy(f"http://127.0.0.1:{settings.ws_port}/healthz")

        async with websockets.connect(f"ws://127.0.0.1:{settings.ws_port}/v1/ws") as ws, aiohttp.ClientSession() as http:
            welcome = await recv_json(ws)
            assert welcome["type"] == "welcome"
            await ws.send(json.dumps({"type": "subscribe", "id": "board", "board": "pushups-weekly", "top": 10, "user": "u2"}))
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot"
            assert snapshot["id"] == "board"
            assert snapshot["resumed"] is False
            assert snapshot["seq"] == 0
            assert snapshot["entries"] == []
            assert snapshot["standing"] is None

            events = [
                {"event_id": "e1", "user_id": "u1", "metric": "pushups", "value": 40, "occurred_at": occurred, "display_name": "Ada"},
                {"event_id": "e2", "user_id": "u2", "metric": "pushups", "value": 25, "occurred_at": occurred, "display_name": "Bo"},
                {"event_id": "e3", "user_id": "u2", "metric": "pushups", "value": 20, "occurred_at": occurred},
                {"event_id": "e4", "user_id": "u3", "metric": "run_distance_m", "value": 5000.25, "occurred_at": occurred},
            ]
            async with http.post(f"{base}/v1/events", json=events, headers=headers) as response:
                posted = await response.json()
            assert response.status == 202
            assert [result["status"] for result in posted["results"]] == ["accepted"] * 4

            # The batch may be pushed in more than one update; wait for u2's final score.
            update = await recv_json(ws)
            while update["standing"] is None or update["standing"]["score"] != 45:
                update = await recv_json(ws)
            expected_top = [
                {"rank": 1, "user_id": "u2", "score": 45, "display_name": "Bo"},
                {"rank": 2, "user_id": "u1", "score": 40, "display_name": "Ada"},
            ]
            assert update["type"] == "update"
            assert update["id"] == "board"
            assert update["entries"] == expected_top
            assert update["standing"]["rank"] == 1
            assert update["standing"]["participants"] == 2
            assert {"user_id": "u2", "score": 45, "rank": 1} in [
                {k: change[k] for k in ("user_id", "score", "rank")} for change in update["changes"]
            ]

            async with http.get(f"{base}/v1/boards/pushups-weekly/top?limit=10") as response:
                top = await response.json()
            assert top["period"] == f"{now.isocalendar().year}-W{now.isocalendar().week:02d}"
            assert top["participants"] == 2
            assert top["entries"] == expected_top
            async with http.get(f"{base}/v1/boards/run-longest/users/u3?around=1") as response:
                mine = await response.json()
            assert (mine["rank"], mine["score"], mine["participants"]) == (1, 5000.25, 1)
            async with http.get(f"{base}/v1/boards/run-longest/users/nobody") as response:
                assert response.status == 404
                assert response.content_type == "application/problem+json"

            # A re-post is a duplicate and is counted once.
            async with http.post(f"{base}/v1/events", json=events[1], headers=headers) as response:
                again = await response.json()
            assert response.status == 200
            assert again["results"] == [{"event_id": "e2", "status": "duplicate"}]

        async def all_persisted() -> bool:
            connection = await asyncpg.connect(settings.database_url)
            try:
                return await connection.fetchval("SELECT count(*) FROM events") == 4
            finally:
                await connection.close()

        await wait_for(all_persisted, what="four events in PostgreSQL")
        connection = await asyncpg.connect(settings.database_url)
        try:
            rows = await connection.fetch("SELECT event_id, count(*) AS n FROM events GROUP BY event_id ORDER BY event_id")
        finally:
            await connection.close()
        assert [(row["event_id"], row["n"]) for row in rows] == [("e1", 1), ("e2", 1), ("e3", 1), ("e4", 1)]

        async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/boards/pushups-weekly/users/u2") as response:
            standing = await response.json()
        assert (standing["rank"], standing["score"]) == (1, 45)

        for service in ("ingest", "ranker", "persister", "gateway"):
            assert services.stop(service) == 0, services.log_text(service)
