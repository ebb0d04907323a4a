"""The worked examples of the board model, through the HTTP API with a settable clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from shared.boards import Board, Operator, Reset, WeekStart
from shared.settings import Settings
from tests.board_pipeline import Pipeline, board_pipeline, utc


async def post_at(pipeline: Pipeline, user: str, value: float, occurred_at: str, **extra: Any) -> dict[str, Any]:
    """Post one event with the clock one minute after it occurred, then apply it."""
    pipeline.clock.set(utc(occurred_at) + timedelta(minutes=1))
    [result] = await pipeline.post_and_process([pipeline.event(user, value, occurred_at, **extra)])
    return result


async def test_new_york_daily_across_dst(settings: Settings, redis_client) -> None:
    """A New York daily board sums the 25-hour Nov 3 and splits the spring-forward days."""
    board = Board(id="ny", metric="m", operator=Operator.SUM, reset=Reset.DAILY, timezone="America/New_York")
    async with board_pipeline(settings, [board], utc("2024-11-03T04:00:00Z")) as pipeline:
        for value, occurred_at in [
            (1000, "2024-11-03T04:30:00Z"),
            (2000, "2024-11-03T05:30:00Z"),
            (3000, "2024-11-03T06:30:00Z"),
            (4000, "2024-11-04T04:30:00Z"),
            (500, "2024-11-04T05:10:00Z"),
        ]:
            assert (await post_at(pipeline, "A", value, occurred_at))["status"] == "accepted"
        assert await pipeline.scores("ny", "2024-11-03") == [(1, "A", 10000)]
        assert await pipeline.scores("ny", "2024-11-04") == [(1, "A", 500)]

        for value, occurred_at in [(100, "2025-03-09T04:30:00Z"), (200, "2025-03-10T03:30:00Z"), (300, "2025-03-10T04:30:00Z")]:
            assert (await post_at(pipeline, "B", value, occurred_at))["status"] == "accepted"
        assert await pipeline.scores("ny", "2025-03-08") == [(1, "B", 100)]
        assert await pipeline.scores("ny", "2025-03-09") == [(1, "B", 200)]
        assert await pipeline.scores("ny", "2025-03-10") == [(1, "B", 300)]

        nov3 = await pipeline.get("/v1/boards/ny/top", period="2024-11-03")
        assert nov3["ends_at"] == "2024-11-04T05:00:00Z"
        assert nov3["status"] == "final"


async def test_berlin_daily_dst_bounds(settings: Settings, redis_client) -> None:
    """Berlin's 23-hour and 25-hour days end at local midnight, as resets_at shows."""
    board = Board(id="berlin", metric="m", operator=Operator.SUM, reset=Reset.DAILY, timezone="Europe/Berlin")
    async with board_pipeline(settings, [board], utc("2026-03-29T12:00:00Z")) as pipeline:
        body = await pipeline.get("/v1/boards/berlin")
        assert body["current_period"] == "2026-03-29"
        assert body["resets_at"] == "2026-03-29T22:00:00Z"
        await post_at(pipeline, "A", 5, "2026-03-28T23:30:00Z")
        await post_at(pipeline, "A", 7, "2026-03-29T21:59:00Z")
        await post_at(pipeline, "A", 11, "2026-03-29T22:00:00Z")
        assert await pipeline.scores("berlin", "2026-03-29") == [(1, "A", 12)]
        assert await pipeline.scores("berlin", "2026-03-30") == [(1, "A", 11)]

        pipeline.clock.set(utc("2026-10-25T12:00:00Z"))
        body = await pipeline.get("/v1/boards/berlin")
        assert body["current_period"] == "2026-10-25"
        assert body["resets_at"] == "2026-10-25T23:00:00Z"
        await post_at(pipeline, "A", 3, "2026-10-24T22:00:00Z")
        await post_at(pipeline, "A", 4, "2026-10-25T22:59:00Z")
        assert await pipeline.scores("berlin", "2026-10-25") == [(1, "A", 7)]


async def test_iso_weeks_across_year_end(settings: Settings, redis_client) -> None:
    """Weekly UTC periods follow ISO weeks, including the 53-week year 2020."""
    board = Board(id="weekly", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY)
    async with board_pipeline(settings, [board], utc("2020-12-31T00:00:00Z")) as pipeline:
        await post_at(pipeline, "X", 7, "2020-12-31T10:00:00Z")
        await post_at(pipeline, "X", 8, "2021-01-03T10:00:00Z")
        await post_at(pipeline, "X", 10, "2024-12-29T10:00:00Z")
        await post_at(pipeline, "X", 20, "2024-12-30T10:00:00Z")
        await post_at(pipeline, "Y", 30, "2024-12-31T23:30:00Z")
        await post_at(pipeline, "X", 40, "2025-01-05T23:59:59Z")
        await post_at(pipeline, "X", 50, "2025-01-06T00:00:00Z")
        assert await pipeline.scores("weekly", "2024-W52") == [(1, "X", 10)]
        assert await pipeline.scores("weekly", "2025-W01") == [(1, "X", 60), (2, "Y", 30)]
        assert await pipeline.scores("weekly", "2025-W02") == [(1, "X", 50)]
        assert await pipeline.scores("weekly", "2020-W53") == [(1, "X", 15)]
        assert await pipeline.scores("weekly", "2024-W01") == []


async def test_week_start_monday_and_sunday(settings: Settings, redis_client) -> None:
    """A Sunday-evening query shows Monday-to-Sunday totals; a Sunday-start week only that Sunday."""
    monday = Board(id="week-mon", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY)
    sunday = Board(id="week-sun", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY, week_start=WeekStart.SUNDAY)
    async with board_pipeline(settings, [monday, sunday], utc("2026-11-30T00:00:00Z")) as pipeline:
        await post_at(pipeline, "A", 3000, "2026-11-30T08:00:00Z")
        await post_at(pipeline, "B", 4000, "2026-12-02T08:00:00Z")
        await post_at(pipeline, "A", 2500, "2026-12-06T09:00:00Z")

        pipeline.clock.set(utc("2026-12-06T20:00:00Z"))
        assert await pipeline.scores("week-mon") == [(1, "A", 5500), (2, "B", 4000)]
        assert await pipeline.scores("week-sun") == [(1, "A", 2500)]
        top = await pipeline.get("/v1/boards/week-sun/top")
        assert top["period"] == "2026-W50"
        assert top["resets_at"] == "2026-12-13T00:00:00Z"

        pipeline.clock.set(utc("2026-12-07T00:00:01Z"))
        assert await pipeline.scores("week-mon") == []
        assert (await pipeline.get("/v1/boards/week-mon/top"))["period"] == "2026-W50"
        assert await pipeline.scores("week-mon", "previous") == [(1, "A", 5500), (2, "B", 4000)]


async def collect_updates(pipeline: Pipeline, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Post and apply ``events`` while listening to the rank-changes channel; return the messages."""
    pubsub = pipeline.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(pipeline.names.rank_changes_channel)
    await pipeline.post_and_process(events)
    messages = []
    for _ in range(40):
        message = await pubsub.get_message(timeout=0.05)
        if message is None and messages:
            break
        if message is not None:
            messages.append(msgspec.json.decode(message["data"]))
    await pubsub.aclose()
    return messages


async def test_ties_and_zeros_share_ranks(settings: Settings, redis_client) -> None:
    """101, 100, 100, 99, 0, 0 rank 1, 2, 2, 4, 5, 5 in lists, pages, own ranks and pushed updates."""
    board = Board(id="ties", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        values = {"a": 101, "b": 100, "c": 100, "d": 99, "e": 0, "f": 0}
        when = "2026-12-04T11:00:00Z"
        [update] = await collect_updates(pipeline, [pipeline.event(user, value, when) for user, value in values.items()])
        assert sorted((change["user_id"], change["rank"]) for change in update["changes"]) == [
            ("a", 1), ("b", 2), ("c", 2), ("d", 4), ("e", 5), ("f", 5)
        ]
        assert await pipeline.scores("ties") == [(1, "a", 101), (2, "c", 100), (2, "b", 100), (4, "d", 99), (5, "f", 0), (5, "e", 0)]

        pages = []
        page = await pipeline.get("/v1/boards/ties/top", limit=2)
        pages.append([(entry["rank"], entry["score"]) for entry in page["entries"]])
        while page["next_cursor"] is not None:
            page = await pipeline.get("/v1/boards/ties/top", limit=2, cursor=page["next_cursor"])
            pages.append([(entry["rank"], entry["score"]) for entry in page["entries"]])
        assert pages == [[(1, 101), (2, 100)], [(2, 100), (4, 99)], [(5, 0), (5, 0)]]

        own = {user: (await pipeline.get(f"/v1/boards/ties/users/{user}"))["rank"] for user in values}
        assert own == {"a": 1, "b": 2, "c": 2, "d": 4, "e": 5, "f": 5}

        [update] = await collect_updates(pipeline, [pipeline.event("d", 1, when)])
        assert update["changes"] == [{"user_id": "d", "score": 100, "rank": 2, "old_score": 99, "old_rank": 4}]
        assert [(rank, score) for rank, _user, score in await pipeline.scores("ties")] == [
            (1, 101), (2, 100), (2, 100), (2, 100), (5, 0), (5, 0)
        ]
        own = {user: (await pipeline.get(f"/v1/boards/ties/users/{user}"))["rank"] for user in values}
        assert own == {"a": 1, "b": 2, "c": 2, "d": 2, "e": 5, "f": 5}
        mine = await pipeline.get("/v1/boards/ties/users/e")
        assert mine["participants"] == 6
        assert mine["percentile"] == 16.67


async def test_pushed_updates_reach_websocket_listeners(settings: Settings, redis_client) -> None:
    """Updates go out on the existing channel and decode as BoardUpdate with defaults omitted."""
    board = Board(id="push", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        [update] = await collect_updates(pipeline, [pipeline.event("a", 5, "2026-12-04T11:00:00Z")])
        assert update == {"board": "push", "period": "all", "seq": 1, "changes": [
            {"user_id": "a", "score": 5, "rank": 1, "old_score": None, "old_rank": None}
        ]}
