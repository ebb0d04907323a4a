"""POST /v1/activities over HTTP: derived events, idempotent re-upload, keys, limits and bad files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import msgspec
import pytest
import redis.asyncio as redis

from services.ingest.activities.model import Measurement
from services.ingest.activities.scoring import activity_event_id
from services.ranker.ranker import Ranker
from shared.api_keys import KeyKind
from shared.boards import BoardRegistry, load_boards
from shared.names import Names
from shared.schema import StreamEvent
from shared.settings import Settings
from shared.stream import Entry
from tests.helpers import ingest_client, new_key, wait_for, wait_healthy
from tests.processes import service_processes
from tests.test_activity_decoding import BAD_FILES, DATA

FENIX_2 = "activity-small-fenix2-run.fit"
FENIX_2_SHA256 = "a066d77db247c152c9583bddaecd33d36327bacc0821694ab795fe25671a8327"
FENIX_2_START = datetime(2015, 8, 15, 14, 45, 8, tzinfo=timezone.utc)
FENIX_2_METRICS = [
    ("run_distance_m", 9008.22), ("run_moving_time_s", 2832.0), ("run_elapsed_time_s", 2832.0), ("run_ascent_m", 64.0),
    ("run_calories_kcal", 516), ("run_1k_time_s", 246.1), ("run_5k_time_s", 1304.1),
]
# One all-time board per metric kind, so no period of these tests can be closed.
ALL_TIME_BOARDS = """
[[board]]
id = "run-longest"
metric = "run_distance_m"
operator = "best"
decimals = 2

[[board]]
id = "ride-longest"
metric = "ride_distance_m"
operator = "best"
decimals = 2
"""
DERIVED_METRICS = (
    "run_moving_time_s", "run_elapsed_time_s", "run_ascent_m", "run_calories_kcal", "run_1k_time_s", "run_5k_time_s",
    "ride_moving_time_s", "ride_elapsed_time_s", "ride_ascent_m", "ride_calories_kcal", "ride_5min_power_w", "ride_20min_power_w",
    "walk_distance_m", "walk_moving_time_s", "walk_elapsed_time_s", "walk_ascent_m", "walk_calories_kcal",
)
# A clock in the week of the GPX and TCX files, which were recorded on 2026-11-28.
NOV_30 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def upload_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose boards are all-time and whose rules accept every derived metric."""
    boards_file = tmp_path / "boards.toml"
    boards_file.write_text(ALL_TIME_BOARDS, encoding="utf-8")
    return replace(settings, boards_file=boards_file, allowed_metrics=DERIVED_METRICS)


async def stream_events(client: redis.Redis, settings: Settings) -> list[StreamEvent]:
    entries = await client.xrange(f"{settings.namespace}:{{events}}:stream")
    return [msgspec.json.decode(fields[b"event"], type=StreamEvent) for _id, fields in entries]


def fit_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/vnd.ant.fit"}


async def test_fit_upload_appends_derived_events(upload_settings: Settings, redis_client) -> None:
    """A FIT upload appends one event per metric with deterministic ids; a re-upload is all duplicate."""
    key = await new_key(upload_settings)
    body = (DATA / FENIX_2).read_bytes()
    async with ingest_client(upload_settings) as http:
        first = await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(key))
        first_body = await first.json()
        again = await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(key))
        again_body = await again.json()

    assert first.status == 202
    assert first_body["activity"] == {"format": "fit", "sha256": FENIX_2_SHA256, "sessions": 1}
    expected_ids = [
        activity_event_id(FENIX_2_SHA256, "ada", Measurement(session_index=0, metric=metric, value=value, occurred_at=FENIX_2_START))
        for metric, value in FENIX_2_METRICS
    ]
    assert first_body["events"] == [
        {"event_id": event_id, "user_id": "ada", "metric": metric, "value": value, "occurred_at": "2015-08-15T14:45:08Z"}
        for event_id, (metric, value) in zip(expected_ids, FENIX_2_METRICS)
    ]
    assert [result["status"] for result in first_body["results"]] == ["accepted"] * 7
    assert [result["event_id"] for result in first_body["results"]] == expected_ids
    assert first_body["closed_periods"] == []

    assert again.status == 200
    assert again_body["events"] == first_body["events"]
    assert again_body["results"] == [{"event_id": event_id, "status": "duplicate"} for event_id in expected_ids]

    stored = await stream_events(redis_client, upload_settings)
    assert [(event.event_id, event.metric, event.value, event.occurred_at) for event in stored] == [
        (event_id, metric, value, FENIX_2_START) for event_id, (metric, value) in zip(expected_ids, FENIX_2_METRICS)
    ]


async def test_same_file_for_two_athletes(upload_settings: Settings, redis_client) -> None:
    """The athlete is part of each event id, so a shared file is accepted for each athlete."""
    key = await new_key(upload_settings)
    body = (DATA / "garmin-fenix-5-run.fit").read_bytes()
    async with ingest_client(upload_settings) as http:
        ada = await (await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(key))).json()
        bo = await (await http.post("/v1/activities?user_id=bo", data=body, headers=fit_headers(key))).json()
    assert [result["status"] for result in ada["results"]] == ["accepted"] * 5
    assert [result["status"] for result in bo["results"]] == ["accepted"] * 5
    assert {result["event_id"] for result in ada["results"]}.isdisjoint(result["event_id"] for result in bo["results"])
    assert len(await stream_events(redis_client, upload_settings)) == 10


async def test_device_and_admin_keys(upload_settings: Settings, redis_client) -> None:
    """A device key uploads for its own athlete only; a server key must name one; an admin key may not upload."""
    device = await new_key(upload_settings, KeyKind.DEVICE, "cy")
    server = await new_key(upload_settings)
    admin = await new_key(upload_settings, KeyKind.ADMIN)
    body = (DATA / "garmin-fenix-5-walk.fit").read_bytes()
    async with ingest_client(upload_settings) as http:
        own = await http.post("/v1/activities", data=body, headers=fit_headers(device))
        own_body = await own.json()
        other = await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(device))
        other_body = await other.json(content_type=None)
        unnamed = await http.post("/v1/activities", data=body, headers=fit_headers(server))
        unnamed_body = await unnamed.json(content_type=None)
        invalid = await http.post("/v1/activities?user_id=a%20b", data=body, headers=fit_headers(server))
        invalid_body = await invalid.json(content_type=None)
        by_admin = await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(admin))
        missing = await http.post("/v1/activities?user_id=ada", data=body)

    assert own.status == 202
    assert {event["user_id"] for event in own_body["events"]} == {"cy"}
    assert other.status == 403
    assert other_body["detail"] == "this device key may upload only for user_id 'cy', not 'ada'"
    assert unnamed.status == 400
    assert unnamed_body["detail"] == "a server key must name the athlete; add ?user_id=<athlete id> to the URL"
    assert unnamed_body["parameter"] == "user_id"
    assert invalid.status == 400
    assert invalid_body["parameter"] == "user_id"
    assert by_admin.status == 403
    assert missing.status == 401
    # Only the device key's own upload was appended: five walk metrics.
    assert len(await stream_events(redis_client, upload_settings)) == 5


async def test_bad_files_rejected_whole(upload_settings: Settings, redis_client) -> None:
    """Every corrupt or non-activity file gets 422 problem+json with its detail, and nothing is appended."""
    key = await new_key(upload_settings)
    async with ingest_client(upload_settings) as http:
        for name, slug, detail in BAD_FILES:
            response = await http.post("/v1/activities?user_id=ada", data=(DATA / name).read_bytes(), headers=fit_headers(key))
            problem = await response.json(content_type=None)
            assert response.status == 422, name
            assert response.content_type == "application/problem+json", name
            assert problem["type"] == f"urn:rankstream:problem:{slug}", name
            assert problem["detail"] == detail, name
    assert await stream_events(redis_client, upload_settings) == []


async def in_two_chunks(body: bytes) -> AsyncIterator[bytes]:
    """Yield ``body`` in two parts, so the client sends it chunked with no Content-Length."""
    middle = len(body) // 2
    yield body[:middle]
    yield body[middle:]


async def test_size_type_and_empty_limits(upload_settings: Settings, redis_client) -> None:
    """A file over the size limit gets 413, an unknown Content-Type 415 and an empty body 400."""
    key = await new_key(upload_settings)
    small = replace(upload_settings, max_activity_bytes=100_000)
    body = (DATA / FENIX_2).read_bytes()
    assert len(body) == 121_839
    async with ingest_client(small) as http:
        too_large = await http.post("/v1/activities?user_id=ada", data=body, headers=fit_headers(key))
        too_large_body = await too_large.json(content_type=None)
        chunked = await http.post("/v1/activities?user_id=ada", data=in_two_chunks(body), headers=fit_headers(key))
        wrong_type = await http.post(
            "/v1/activities?user_id=ada", data=b"{}", headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        wrong_type_body = await wrong_type.json(content_type=None)
        empty = await http.post("/v1/activities?user_id=ada", data=b"", headers=fit_headers(key))
    assert too_large.status == 413
    assert too_large_body["detail"] == (
        "the activity file exceeds 100000 bytes; upload one activity per request, or ask the operator to raise RANKSTREAM_MAX_ACTIVITY_BYTES"
    )
    # Without a Content-Length the limit applies while reading.
    assert chunked.status == 413
    assert wrong_type.status == 415
    assert wrong_type_body["detail"] == (
        "Content-Type 'application/json' is not an activity file type; use one of application/vnd.ant.fit, "
        "application/gpx+xml, application/vnd.garmin.tcx+xml, application/octet-stream"
    )
    assert empty.status == 400
    assert await stream_events(redis_client, upload_settings) == []


async def test_event_count_bound(upload_settings: Settings, redis_client) -> None:
    """A file yielding more events than one request may append is rejected whole."""
    key = await new_key(upload_settings)
    narrow = replace(upload_settings, max_events_per_request=6)
    async with ingest_client(narrow) as http:
        response = await http.post("/v1/activities?user_id=ada", data=(DATA / FENIX_2).read_bytes(), headers=fit_headers(key))
        problem = await response.json(content_type=None)
    assert response.status == 422
    assert problem["type"] == "urn:rankstream:problem:too-many-events"
    assert problem["detail"] == (
        "the file's 1 sessions yield 7 events, more than the 6 one request may append; split the file into fewer sessions per upload"
    )
    assert await stream_events(redis_client, upload_settings) == []


async def test_decode_time_bound(upload_settings: Settings, redis_client) -> None:
    """Decoding that outlasts the time bound is stopped and reported as 422, appending nothing."""
    key = await new_key(upload_settings)
    hasty = replace(upload_settings, activity_decode_timeout_ms=1)
    async with ingest_client(hasty) as http:
        response = await http.post("/v1/activities?user_id=ada", data=(DATA / FENIX_2).read_bytes(), headers=fit_headers(key))
        problem = await response.json(content_type=None)
    assert response.status == 422
    assert problem["type"] == "urn:rankstream:problem:activity-decode-timeout"
    assert problem["detail"] == (
        "decoding stopped after 0.001 s; upload a shorter activity, or ask the operator to raise RANKSTREAM_ACTIVITY_DECODE_TIMEOUT_MS"
    )
    assert await stream_events(redis_client, upload_settings) == []


@pytest.mark.parametrize(
    ("name", "content_type", "metrics"),
    [
        ("run-5k-north.gpx", "application/gpx+xml", ["run_distance_m", "run_moving_time_s", "run_elapsed_time_s", "run_ascent_m", "run_1k_time_s", "run_5k_time_s"]),
        ("ride-two-laps-power.tcx", "application/vnd.garmin.tcx+xml", [
            "ride_distance_m", "ride_moving_time_s", "ride_elapsed_time_s", "ride_ascent_m", "ride_calories_kcal", "ride_5min_power_w", "ride_20min_power_w",
        ]),
        ("ride-two-laps-power.tcx", "application/octet-stream", [
            "ride_distance_m", "ride_moving_time_s", "ride_elapsed_time_s", "ride_ascent_m", "ride_calories_kcal", "ride_5min_power_w", "ride_20min_power_w",
        ]),
    ],
)
async def test_gpx_and_tcx_uploads_accepted(upload_settings: Settings, redis_client, name: str, content_type: str, metrics: list[str]) -> None:
    """GPX and TCX files, declared or detected, are accepted like FIT files."""
    key = await new_key(upload_settings)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    async with ingest_client(upload_settings, clock=lambda: NOV_30) as http:
        response = await http.post("/v1/activities?user_id=ada", data=(DATA / name).read_bytes(), headers=headers)
        body = await response.json()
    assert response.status == 202
    assert body["activity"]["format"] == name.rsplit(".", 1)[1]
    assert [event["metric"] for event in body["events"]] == metrics
    assert [result["status"] for result in body["results"]] == ["accepted"] * len(metrics)
    assert [event.metric for event in await stream_events(redis_client, upload_settings)] == metrics


async def test_fenix_2_run_on_default_boards(settings: Settings, redis_client) -> None:
    """The 2015 Fenix 2 run tops the all-time boards, and the monthly board reports its 2015 period closed."""
    key = await new_key(settings)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/activities?user_id=ada", data=(DATA / FENIX_2).read_bytes(), headers=fit_headers(key))
        uploaded = await response.json()
        entries = [
            Entry(stream_id=stream_id.decode(), event=msgspec.json.decode(fields[b"event"], type=StreamEvent))
            for stream_id, fields in await redis_client.xrange(f"{settings.namespace}:{{events}}:stream")
        ]
        await Ranker(redis_client, Names(settings.namespace), BoardRegistry(load_boards(settings.boards_file))).handle(entries)
        longest = await (await http.get("/v1/boards/run-longest/users/ada")).json()
        fastest = await (await http.get("/v1/boards/5k-fastest/users/ada")).json()
        monthly = await (await http.get("/v1/boards/run-distance-monthly/top?period=2015-08")).json()

    assert response.status == 202
    outcomes = {event["metric"]: result for event, result in zip(uploaded["events"], uploaded["results"])}
    assert outcomes["run_distance_m"]["status"] == "accepted"
    assert outcomes["run_5k_time_s"]["status"] == "accepted"
    # The default rules accept only metrics that some board ranks.
    for metric in ("run_moving_time_s", "run_elapsed_time_s", "run_ascent_m", "run_calories_kcal", "run_1k_time_s"):
        assert outcomes[metric]["status"] == "rejected", metric
        assert outcomes[metric]["field"] == "metric", metric
    assert [entry.event.metric for entry in entries] == ["run_distance_m", "run_5k_time_s"]

    assert (longest["period"], longest["rank"], longest["score"]) == ("all", 1, 9008.22)
    assert (fastest["period"], fastest["rank"], fastest["score"]) == ("all", 1, 1304.1)
    assert monthly["entries"] == []
    assert monthly["participants"] == 0
    assert monthly["status"] == "final"
    assert uploaded["closed_periods"] == [{
        "event_id": outcomes["run_distance_m"]["event_id"],
        "board": "run-distance-monthly",
        "period": "2015-08",
        "reason": "period closed: period '2015-08' of board 'run-distance-monthly' stopped taking late events at 2015-09-01T01:00:00Z",
    }]


async def test_upload_to_ingest_process(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Through separate ingest and ranker processes, an uploaded run reaches the read API and stops cleanly."""
    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest")
        services.start("ranker", "ranker")
        await wait_healthy(f"{base}/healthz")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/activities?user_id=ada", data=(DATA / FENIX_2).read_bytes(), headers=fit_headers(key)) as response:
                uploaded = await response.json()

            async def ranked() -> bool:
                async with http.get(f"{base}/v1/boards/run-longest/users/ada") as standing:
                    return standing.status == 200

            await wait_for(ranked, what="ada on run-longest")
            async with http.get(f"{base}/v1/boards/run-longest/users/ada") as standing:
                longest = await standing.json()

        assert response.status == 202
        assert uploaded["activity"]["sha256"] == FENIX_2_SHA256
        assert (longest["rank"], longest["score"]) == (1, 9008.22)
        assert services.stop("ranker") == 0, services.log_text("ranker")
        assert services.stop("ingest") == 0, services.log_text("ingest")
