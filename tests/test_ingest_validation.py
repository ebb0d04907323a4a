"""POST /v1/events validation: each bad field is rejected by name, valid neighbours still accepted."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from services.ingest import events
from services.ingest.appender import Appender
from shared.names import Names
from shared.schema import ScoreEvent
from shared.settings import Settings
from tests.helpers import ingest_client, new_key

VALID = {
    "event_id": "ok-1",
    "user_id": "u1",
    "metric": "pushups",
    "value": 1200,
    "occurred_at": "2026-12-02T10:00:00+01:00",
}

BAD_FIELDS = [
    ("missing event_id", {"event_id": None}, "event_id", "is required"),
    ("event_id wrong type", {"event_id": 12}, "event_id", "Expected `str`, got `int`"),
    ("event_id empty", {"event_id": ""}, "event_id", "Expected `str` of length >= 1"),
    ("event_id too long", {"event_id": "x" * 65}, "event_id", "Expected `str` of length <= 64"),
    ("missing user_id", {"user_id": None}, "user_id", "is required"),
    ("user_id empty", {"user_id": ""}, "user_id", "Expected `str` of length >= 1"),
    ("user_id too long", {"user_id": "u" * 65}, "user_id", "Expected `str` of length <= 64"),
    ("metric wrong type", {"metric": ["pushups"]}, "metric", "Expected `str`, got `array`"),
    ("metric empty", {"metric": ""}, "metric", "Expected `str` of length >= 1"),
    ("missing value", {"value": None}, "value", "is required"),
    ("value as string", {"value": "NaN"}, "value", "Expected `int | float`, got `str`"),
    ("value as bool", {"value": True}, "value", "Expected `int | float`, got `bool`"),
    ("missing occurred_at", {"occurred_at": None}, "occurred_at", "is required"),
    ("occurred_at without offset", {"occurred_at": "2026-12-02T10:00:00"}, "occurred_at", "Expected `datetime` with a timezone component"),
    ("occurred_at not a time", {"occurred_at": "yesterday"}, "occurred_at", "Invalid RFC3339 encoded datetime"),
    ("display_name too long", {"display_name": "n" * 65}, "display_name", "Expected `str` of length <= 64"),
    ("groups not a list", {"groups": "club"}, "groups", "Expected `array`, got `str`"),
]


def bad_event(changes: dict) -> dict:
    event = {**VALID, "event_id": "bad-1"}
    for field, value in changes.items():
        if value is None:
            del event[field]
        else:
            event[field] = value
    return event


@pytest.mark.parametrize(("case", "changes", "field", "reason"), BAD_FIELDS, ids=[case[0] for case in BAD_FIELDS])
async def test_bad_field_rejected_by_name(settings: Settings, redis_client, case: str, changes: dict, field: str, reason: str) -> None:
    """A bad field rejects that event with the field named; the valid event beside it is accepted."""
    key = await new_key(settings)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=[bad_event(changes), VALID], headers={"Authorization": f"Bearer {key}"})
        body = await response.json()
    assert response.status == 202
    rejected, accepted = body["results"]
    assert rejected["status"] == "rejected"
    assert rejected["field"] == field
    assert rejected["reason"].startswith(reason)
    assert accepted["status"] == "accepted"
    assert accepted["event_id"] == "ok-1"
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 1


@pytest.mark.parametrize(
    ("raw_value", "reason"),
    [
        ("NaN", "must be a finite number, not NaN or Infinity"),
        ("Infinity", "must be a finite number, not NaN or Infinity"),
        ("-Infinity", "must be a finite number, not NaN or Infinity"),
        ("1e400", "must be a finite number, not NaN or Infinity"),
        ("19933688932870350000", "must be between -9007199254740992 and 9007199254740992"),
    ],
)
async def test_non_finite_or_inexact_value_rejected(settings: Settings, redis_client, raw_value: str, reason: str) -> None:
    """NaN, Infinity, overflowing and inexact numbers are rejected naming value, never stored."""
    key = await new_key(settings)
    body = (
        '[{"event_id":"bad","user_id":"u1","metric":"pushups","value":' + raw_value
        + ',"occurred_at":"2026-12-02T10:00:00Z"},'
        '{"event_id":"ok","user_id":"u1","metric":"pushups","value":1200,"occurred_at":"2026-12-02T10:00:00Z"}]'
    )
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", data=body, headers={"Authorization": f"Bearer {key}"})
        results = (await response.json())["results"]
    assert response.status == 202
    assert results[0] == {"event_id": "bad", "status": "rejected", "field": "value", "reason": results[0]["reason"]}
    assert results[0]["reason"].startswith(reason)
    assert results[1]["status"] == "accepted"
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 1


async def test_unparseable_body_is_problem(settings: Settings, redis_client) -> None:
    """A body that is not JSON gets 400 problem+json."""
    key = await new_key(settings)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", data=b"{not json", headers={"Authorization": f"Bearer {key}"})
        body = await response.json(content_type=None)
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert body["title"] == "Body is not valid JSON"
    assert body["status"] == 400


async def test_missing_or_wrong_key_is_401(settings: Settings, redis_client) -> None:
    """Writes without a valid bearer key get 401 problem+json and append nothing."""
    async with ingest_client(settings) as http:
        missing = await http.post("/v1/events", json=VALID)
        wrong = await http.post("/v1/events", json=VALID, headers={"Authorization": "Bearer rsk_wrong"})
        missing_body = await missing.json(content_type=None)
    assert missing.status == 401
    assert wrong.status == 401
    assert missing.content_type == "application/problem+json"
    assert missing_body["detail"] == "missing Authorization header; send 'Authorization: Bearer <key>'"
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 0


async def test_body_shapes_and_limits(settings: Settings, redis_client) -> None:
    """One object, an array and an envelope are accepted; 1,001 events get 413."""
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(settings) as http:
        one = await http.post("/v1/events", json={**VALID, "event_id": "s1"}, headers=headers)
        envelope = await http.post("/v1/events", json={"events": [{**VALID, "event_id": "s2"}]}, headers=headers)
        too_many = await http.post("/v1/events", json=[{**VALID, "event_id": f"m{i}"} for i in range(1001)], headers=headers)
        too_big = await http.post("/v1/events", data=b"[" + b" " * (1024 * 1024) + b"]", headers=headers)
    assert one.status == 202
    assert envelope.status == 202
    assert too_many.status == 413
    assert too_big.status == 413
    assert too_big.content_type == "application/problem+json"
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 2


async def test_duplicate_and_conflict(settings: Settings, redis_client) -> None:
    """An identical re-post is a duplicate (200), also with the same instant in UTC; the same id with another body is a conflict."""
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(settings) as http:
        first = await http.post("/v1/events", json=VALID, headers=headers)
        again = await http.post("/v1/events", json=VALID, headers=headers)
        again_in_utc = await http.post("/v1/events", json={**VALID, "occurred_at": "2026-12-02T09:00:00Z"}, headers=headers)
        changed = await http.post("/v1/events", json={**VALID, "value": 1500}, headers=headers)
        again_body = await again.json()
        again_in_utc_body = await again_in_utc.json()
        changed_body = await changed.json()
    assert first.status == 202
    assert again.status == 200
    assert again_body["results"] == [{"event_id": "ok-1", "status": "duplicate"}]
    assert again_in_utc_body["results"] == [{"event_id": "ok-1", "status": "duplicate"}]
    assert changed.status == 200
    assert changed_body["results"][0]["status"] == "conflict"
    assert changed_body["results"][0]["field"] == "event_id"
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 1


async def test_duplicate_writes_so_its_fsync_wait_covers_original(settings: Settings, redis_client) -> None:
    """A duplicate rewrites the seen key with its TTL kept, so a WAITAOF on its connection covers the original."""
    appender = Appender(redis_client, Names(settings.namespace), dedupe_ttl_s=1000, durability="relaxed")
    event = msgspec.convert(VALID, ScoreEvent)
    received_at = datetime(2026, 12, 2, 10, 0, 1, tzinfo=timezone.utc)
    seen_key = f"{settings.namespace}:{{events}}:seen:ok-1"

    first = await appender.append([event], received_at)
    stored_hash = await redis_client.get(seen_key)
    await redis_client.expire(seen_key, 500)
    offset_before = (await redis_client.info("replication"))["master_repl_offset"]
    again = await appender.append([event], received_at)
    offset_after = (await redis_client.info("replication"))["master_repl_offset"]

    assert first[0] != "duplicate"
    assert again == ["duplicate"]
    assert offset_after > offset_before
    assert await redis_client.get(seen_key) == stored_hash
    assert 490 <= await redis_client.ttl(seen_key) <= 500


async def test_repeated_id_in_one_request(settings: Settings, redis_client) -> None:
    """A repeated event_id inside one request is appended once; the copies are duplicate or conflict."""
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    body = [VALID, VALID, {**VALID, "value": 99}]
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=body, headers=headers)
        results = (await response.json())["results"]
        retry = await http.post("/v1/events", json=VALID, headers=headers)
        retry_results = (await retry.json())["results"]
    assert response.status == 202
    assert [result["status"] for result in results] == ["accepted", "duplicate", "conflict"]
    assert retry_results == [{"event_id": "ok-1", "status": "duplicate"}]
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 1


async def test_info_log_only_with_rejections(
    settings: Settings, redis_client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request with a rejected event is logged at info with its counts, a fully accepted one at debug."""
    # A module logger used before another test reconfigured structlog keeps
    # the old processors, which capture_logs does not replace. A new one does.
    monkeypatch.setattr(events, "log", structlog.get_logger(events.__name__))
    # The suite logs at warning, and the handler builds its debug line only when debug is on.
    caplog.set_level(logging.DEBUG, logger=events.__name__)
    key = await new_key(settings)
    async with ingest_client(settings) as http:
        with capture_logs() as logs:
            mixed = await http.post("/v1/events", json=[bad_event({"value": "NaN"}), VALID], headers={"Authorization": f"Bearer {key}"})
            clean = await http.post("/v1/events", json=[{**VALID, "event_id": "ok-2"}], headers={"Authorization": f"Bearer {key}"})
    assert mixed.status == 202
    assert clean.status == 202
    posted = [entry for entry in logs if entry["event"].startswith("events posted")]
    assert [(entry["event"], entry["log_level"]) for entry in posted] == [
        ("events posted, some not accepted", "info"),
        ("events posted", "debug"),
    ]
    assert {name: posted[0][name] for name in ("accepted", "duplicate", "rejected", "conflict")} == {"accepted": 1, "duplicate": 0, "rejected": 1, "conflict": 0}


async def test_event_late_for_one_board_names_it(settings: Settings, redis_client) -> None:
    """An old run counts on the all-time board, and the response names the monthly board that leaves it out."""
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    old_run = {"event_id": "old-run", "user_id": "u1", "metric": "run_distance_m", "value": 5000, "occurred_at": "2015-08-15T14:45:08Z"}
    async with ingest_client(settings) as http:
        late = await http.post("/v1/events", json=[old_run], headers=headers)
        late_body = await late.json()
        current = await http.post("/v1/events", json=[{**VALID, "event_id": "now-1"}], headers=headers)
        current_body = await current.json()

    assert late.status == 202
    assert [(result["event_id"], result["status"]) for result in late_body["results"]] == [("old-run", "accepted")]
    assert late_body["closed_periods"] == [{
        "event_id": "old-run",
        "board": "run-distance-monthly",
        "period": "2015-08",
        "reason": "period closed: period '2015-08' of board 'run-distance-monthly' stopped taking late events at 2015-09-01T01:00:00Z",
    }]
    assert current.status == 202
    assert set(current_body) == {"results"}
