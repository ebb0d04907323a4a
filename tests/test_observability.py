"""/metrics, /healthz, /readyz and ``rankstream status`` on the four services run as processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import asyncpg
import websockets
from prometheus_client.parser import text_string_to_metric_families

from shared.embedded import free_port
from shared.periods import period_of
from shared.boards import BoardRegistry, load_boards
from shared.settings import Settings
from tests.conftest import service_env
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of a /metrics page keyed by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json(content_type=None)


def event(event_id: str, user_id: str, value: float, occurred_at: str) -> dict:
    return {"event_id": event_id, "user_id": user_id, "metric": "pushups", "value": value, "occurred_at": occurred_at}


async def test_probes_and_metrics_of_four_services(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Each service serves its probes, and the metrics count exactly the events posted."""
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    gateway = f"http://127.0.0.1:{settings.ws_port}"
    ranker_port, persister_port = free_port(), free_port()
    occurred = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    events = [event(f"e{i}", f"u{i % 3}", 10 + i, occurred) for i in range(5)]
    events.append({**event("bad", "u9", 0, occurred), "value": "ten"})

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest")
        # No trimming, so the stream still contains every entry when its length is checked.
        services.start("ranker", "ranker", RANKSTREAM_METRICS_PORT=str(ranker_port), RANKSTREAM_TRIM_INTERVAL_MS="0")
        services.start("persister", "persister", RANKSTREAM_METRICS_PORT=str(persister_port), RANKSTREAM_TRIM_INTERVAL_MS="0")
        services.start("gateway", "gateway")
        urls = {
            "ingest": base,
            "ranker": f"http://127.0.0.1:{ranker_port}",
            "persister": f"http://127.0.0.1:{persister_port}",
            "gateway": gateway,
        }
        for url in urls.values():
            await wait_healthy(f"{url}/healthz")

        async def all_ready() -> bool:
            statuses = [(await get_json(f"{url}/readyz"))[0] for url in urls.values()]
            return statuses == [200, 200, 200, 200]

        await wait_for(all_ready, what="every service ready")
        assert await get_json(f"{urls['ranker']}/readyz") == (200, {"status": "ready", "checks": {"redis": "ok", "group": "ok"}})
        assert await get_json(f"{urls['persister']}/readyz") == (
            200, {"status": "ready", "checks": {"redis": "ok", "postgres": "ok", "group": "ok"}},
        )
        assert await get_json(f"{base}/readyz") == (200, {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}})
        assert await get_json(f"{gateway}/readyz") == (200, {"status": "ready", "checks": {"redis": "ok", "pubsub": "ok"}})
        assert await get_json(f"{urls['ranker']}/healthz") == (200, {"status": "ok"})

        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/events", json=events, headers=headers) as response:
                assert response.status == 202
            async with http.post(f"{base}/v1/events", json=events[0], headers=headers) as response:
                assert response.status == 200

        async def settled() -> bool:
            connection = await asyncpg.connect(settings.database_url)
            try:
                stored = await connection.fetchval("SELECT count(*) FROM events")
            finally:
                await connection.close()
            groups = {group["name"]: group for group in await redis_client.xinfo_groups(f"{settings.namespace}:{{events}}:stream")}
            return stored == 5 and len(groups) == 2 and all(group["pending"] == 0 and group["lag"] == 0 for group in groups.values())

        await wait_for(settled, what="both groups caught up")

        ingest = await scrape(f"{base}/metrics")
        assert ingest[("rankstream_ingest_events_total", (("outcome", "accepted"),))] == 5
        assert ingest[("rankstream_ingest_events_total", (("outcome", "rejected"),))] == 1
        assert ingest[("rankstream_ingest_events_total", (("outcome", "duplicate"),))] == 1
        assert ingest[("rankstream_ingest_rejections_total", (("reason", "value"),))] == 1
        assert ingest[("rankstream_http_requests_total", (("method", "POST"), ("route", "/v1/events"), ("status", "202")))] == 1
        assert ingest[("rankstream_http_requests_total", (("method", "POST"), ("route", "/v1/events"), ("status", "200")))] == 1
        assert ingest[("rankstream_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/events")))] == 2
        assert ingest[("rankstream_stream_length_entries", (("stream", "events"),))] == 5
        assert ingest[("rankstream_stream_length_entries", (("stream", "dead-letter"),))] == 0
        for group in ("ranker", "persister"):
            assert ingest[("rankstream_group_consumers", (("group", group),))] == 1
            assert ingest[("rankstream_group_pending_entries", (("group", group),))] == 0
            assert ingest[("rankstream_group_lag_entries", (("group", group),))] == 0
        assert ingest[("rankstream_redis_used_memory_bytes", ())] > 0
        assert ingest[("rankstream_redis_eviction_risk", (("policy", "noeviction"),))] == 0

        ranker = await scrape(f"{urls['ranker']}/metrics")
        assert ranker[("rankstream_batch_size_entries_sum", (("group", "ranker"),))] == 5
        assert ranker[("rankstream_dead_letters_total", (("group", "ranker"),))] == 0

        persister = await scrape(f"{urls['persister']}/metrics")
        assert persister[("rankstream_batch_size_entries_sum", (("group", "persister"),))] == 5
        assert persister[("rankstream_postgres_rows_inserted_total", ())] == 5
        assert persister[("rankstream_postgres_insert_duration_seconds_count", ())] >= 1

        async with websockets.connect(f"ws://127.0.0.1:{settings.ws_port}/v1/ws"):
            opened = await scrape(f"{gateway}/metrics")
        assert opened[("rankstream_websocket_connections", ())] == 1

        async def gateway_connections() -> float:
            return (await scrape(f"{gateway}/metrics"))[("rankstream_websocket_connections", ())]

        async def closed() -> bool:
            return await gateway_connections() == 0

        await wait_for(closed, what="gateway connection count back to 0")

        status = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services", "status", "--json"],
            env=service_env(settings), capture_output=True, text=True, timeout=60,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        board = BoardRegistry(load_boards(settings.boards_file)).by_id["pushups-weekly"]
        week = period_of(board, datetime.fromisoformat(occurred))
        assert report["snapshot"]["stream_length_entries"] == 5
        assert [(g["name"], g["consumers"], g["pending_entries"], g["lag_entries"]) for g in report["snapshot"]["groups"]] == [
            ("persister", 1, 0, 0), ("ranker", 1, 0, 0),
        ]
        assert report["dead_letters_by_group"] == {}
        assert {"board": "pushups-weekly", "period": week, "athletes": 3} in report["board_periods"]

        for name in ("ingest", "ranker", "persister", "gateway"):
            assert services.stop(name) == 0, services.log_text(name)
