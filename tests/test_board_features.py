"""Board features through the HTTP API: late events, latest, groups, tie policy first, hiding, decimals."""

from __future__ import annotations

from shared.boards import Board, Operator, Order, Reset, Scope, Tie
from shared.settings import Settings
from tests.board_pipeline import board_pipeline, utc

DAILY = Board(id="daily", metric="m", operator=Operator.SUM, reset=Reset.DAILY)


async def test_late_event_inside_and_outside_grace(settings: Settings, redis_client) -> None:
    """A late event counts within the hour of grace and is rejected as period closed after it."""
    async with board_pipeline(settings, [DAILY], utc("2026-12-04T00:30:00Z")) as pipeline:
        [inside] = await pipeline.post_and_process([pipeline.event("a", 10, "2026-12-03T23:30:00Z")])
        assert inside["status"] == "accepted"
        previous = await pipeline.get("/v1/boards/daily/top", period="previous")
        assert previous["period"] == "2026-12-03"
        assert previous["status"] == "provisional"
        assert [(entry["user_id"], entry["score"]) for entry in previous["entries"]] == [("a", 10)]

        pipeline.clock.set(utc("2026-12-04T01:00:01Z"))
        [outside] = await pipeline.post_and_process([pipeline.event("a", 5, "2026-12-03T23:45:00Z")])
        assert outside["status"] == "rejected"
        assert outside["field"] == "occurred_at"
        assert outside["reason"] == "period closed: period '2026-12-03' of board 'daily' stopped taking late events at 2026-12-04T01:00:00Z"
        assert await pipeline.scores("daily", "2026-12-03") == [(1, "a", 10)]
        assert (await pipeline.get("/v1/boards/daily/top", period="2026-12-03"))["status"] == "final"


async def test_future_events_beyond_five_minutes_rejected(settings: Settings, redis_client) -> None:
    """An event up to 5 minutes ahead of now is accepted; one further ahead is rejected."""
    async with board_pipeline(settings, [DAILY], utc("2026-12-04T12:00:00Z")) as pipeline:
        near, far = await pipeline.post([
            pipeline.event("a", 1, "2026-12-04T12:04:59Z"),
            pipeline.event("a", 1, "2026-12-04T12:05:01Z"),
        ])
        assert near["status"] == "accepted"
        assert far["status"] == "rejected"
        assert far["field"] == "occurred_at"
        assert far["reason"] == "is more than 5 minutes in the future; send events when the workout has happened"


async def test_late_event_still_counts_on_open_boards(settings: Settings, redis_client) -> None:
    """An event too late for a daily board still counts on the metric's all-time board."""
    forever = Board(id="forever", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [DAILY, forever], utc("2026-12-06T00:00:00Z")) as pipeline:
        [result] = await pipeline.post_and_process([pipeline.event("a", 4, "2026-12-03T10:00:00Z")])
        assert result["status"] == "accepted"
        assert await pipeline.scores("forever") == [(1, "a", 4)]
        assert await pipeline.scores("daily", "2026-12-03") == []


async def test_latest_keeps_last_by_occurred_at(settings: Settings, redis_client) -> None:
    """latest keeps the value with the latest occurred_at, whatever the arrival order."""
    board = Board(id="weight", metric="m", operator=Operator.LATEST, decimals=1)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        await pipeline.post_and_process([pipeline.event("a", 70.5, "2026-12-04T11:00:00Z")])
        await pipeline.post_and_process([pipeline.event("a", 80, "2026-12-04T10:00:00Z")])
        assert await pipeline.scores("weight") == [(1, "a", 70.5)]
        await pipeline.post_and_process([pipeline.event("a", 69.9, "2026-12-04T11:30:00Z")])
        assert await pipeline.scores("weight") == [(1, "a", 69.9)]


async def test_group_boards_rank_each_group(settings: Settings, redis_client) -> None:
    """A group board keeps one ranking per group named in the event."""
    board = Board(id="gyms", metric="m", operator=Operator.SUM, scope=Scope.GROUP)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        when = "2026-12-04T11:00:00Z"
        await pipeline.post_and_process([
            pipeline.event("a", 10, when, groups=["gym-1", "class:7"]),
            pipeline.event("b", 20, when, groups=["gym-1"]),
            pipeline.event("c", 5, when, groups=["class:7"]),
            pipeline.event("d", 50, when),
        ])
        assert await pipeline.scores("gyms", group="gym-1") == [(1, "b", 20), (2, "a", 10)]
        assert await pipeline.scores("gyms", group="class:7") == [(1, "a", 10), (2, "c", 5)]
        mine = await pipeline.get("/v1/boards/gyms/groups/gym-1/users/a")
        assert (mine["group"], mine["rank"], mine["participants"]) == ("gym-1", 2, 2)
        missing = await pipeline.get("/v1/boards/gyms/top", expected_status=404)
        assert missing["type"] == "urn:rankstream:problem:group-required"


async def test_tie_policy_first_orders_by_reach_time(settings: Settings, redis_client) -> None:
    """With tie policy first, who reached a score first ranks higher, also after others move."""
    board = Board(id="race", metric="m", operator=Operator.SUM, tie=Tie.FIRST)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        await pipeline.post_and_process([pipeline.event("b", 60, "2026-12-04T09:00:00Z")])
        await pipeline.post_and_process([pipeline.event("b", 40, "2026-12-04T10:00:00Z")])
        await pipeline.post_and_process([pipeline.event("a", 100, "2026-12-04T09:30:00Z")])
        await pipeline.post_and_process([pipeline.event("d", 100, "2026-12-04T11:00:00Z")])
        assert await pipeline.scores("race") == [(1, "a", 100), (2, "b", 100), (3, "d", 100)]

        await pipeline.post_and_process([pipeline.event("c", 50, "2026-12-04T11:10:00Z"), pipeline.event("d", 0, "2026-12-04T08:00:00Z")])
        assert await pipeline.scores("race") == [(1, "a", 100), (2, "b", 100), (3, "d", 100), (4, "c", 50)]
        assert (await pipeline.get("/v1/boards/race/users/b"))["rank"] == 2
        page = await pipeline.get("/v1/boards/race/top", limit=1, offset=2)
        assert [(entry["rank"], entry["user_id"]) for entry in page["entries"]] == [(3, "d")]

        await pipeline.post_and_process([pipeline.event("c", 50, "2026-12-04T11:20:00Z")])
        assert await pipeline.scores("race") == [(1, "a", 100), (2, "b", 100), (3, "d", 100), (4, "c", 100)]


async def test_hidden_athletes_take_no_rank(settings: Settings, redis_client) -> None:
    """Hiding leaves an athlete out of every rank; unhiding restores the exact standing."""
    board = Board(id="hide", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        when = "2026-12-04T11:00:00Z"
        await pipeline.post_and_process([pipeline.event(user, value, when) for user, value in [("a", 30), ("b", 20), ("c", 20), ("d", 10)]])
        admin = {"Authorization": f"Bearer {pipeline.admin_key}"}
        response = await pipeline.http.put("/v1/admin/hidden/b", json={"reason": "staff"}, headers=admin)
        assert response.status == 200
        assert await response.json() == {"user_id": "b", "hidden": True}
        await pipeline.post_and_process([pipeline.event("b", 100, when)])
        assert await pipeline.scores("hide") == [(1, "a", 30), (2, "c", 20), (3, "d", 10)]
        assert (await pipeline.get("/v1/boards/hide/users/d"))["rank"] == 3
        assert (await pipeline.get("/v1/boards/hide/users/b", expected_status=404))["type"] == "urn:rankstream:problem:user-not-ranked"

        server = {"Authorization": f"Bearer {pipeline.key}"}
        assert (await pipeline.http.put("/v1/admin/hidden/c", headers=server)).status == 403
        assert (await pipeline.http.put("/v1/users/c/opt-out", headers=server)).status == 200
        assert await pipeline.scores("hide") == [(1, "a", 30), (2, "d", 10)]
        ranks = await pipeline.http.post("/v1/boards/hide/ranks", json={"user_ids": ["d", "b", "zz"]})
        assert (await ranks.json())["ranks"] == [
            {"user_id": "d", "rank": 2, "score": 10}, {"user_id": "b", "rank": None, "score": None}, {"user_id": "zz", "rank": None, "score": None}
        ]

        assert (await pipeline.http.delete("/v1/admin/hidden/b", headers=admin)).status == 200
        assert (await pipeline.http.delete("/v1/users/c/opt-out", headers=server)).status == 200
        assert await pipeline.scores("hide") == [(1, "b", 120), (2, "a", 30), (3, "c", 20), (4, "d", 10)]


async def test_decimals_sum_exactly(settings: Settings, redis_client) -> None:
    """Ten events of 0.1 sum to exactly 1.0; a value beyond 2^53 after scaling is rejected."""
    board = Board(id="km", metric="m", operator=Operator.SUM, decimals=1)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        await pipeline.post_and_process([pipeline.event("a", 0.1, "2026-12-04T11:00:00Z") for _ in range(10)])
        assert await pipeline.scores("km") == [(1, "a", 1.0)]
        [result] = await pipeline.post([pipeline.event("a", 2**53, "2026-12-04T11:00:00Z")])
        assert result["status"] == "rejected"
        assert result["field"] == "value"
        assert "exceeds 2^53" in result["reason"]


async def test_cron_board_periods(settings: Settings, redis_client) -> None:
    """A cron board's periods start at its fire times, named by their UTC instant."""
    board = Board(id="cron", metric="m", operator=Operator.SUM, reset=Reset.CRON, cron="0 6 * * 1", timezone="Europe/Berlin")
    async with board_pipeline(settings, [board], utc("2026-12-07T05:10:00Z")) as pipeline:
        results = await pipeline.post_and_process([pipeline.event("a", 3, "2026-12-07T04:59:00Z"), pipeline.event("a", 4, "2026-12-07T05:00:00Z")])
        assert [result["status"] for result in results] == ["accepted", "accepted"]
        pipeline.clock.set(utc("2026-12-08T12:00:00Z"))
        top = await pipeline.get("/v1/boards/cron/top")
        assert top["period"] == "2026-12-07T05:00:00Z"
        assert top["resets_at"] == "2026-12-14T05:00:00Z"
        assert [(entry["user_id"], entry["score"]) for entry in top["entries"]] == [("a", 4)]
        assert await pipeline.scores("cron", "previous") == [(1, "a", 3)]
        board_info = await pipeline.get("/v1/boards/cron")
        assert board_info["reset"] == "0 6 * * 1"


async def test_percentile_and_neighbours(settings: Settings, redis_client) -> None:
    """One athlete's standing carries a percentile rank and K neighbours each side."""
    board = Board(id="pct", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        await pipeline.post_and_process([pipeline.event(f"u{i}", i * 10, "2026-12-04T11:00:00Z") for i in range(1, 6)])
        mine = await pipeline.get("/v1/boards/pct/users/u3", around=1)
        assert (mine["rank"], mine["score"], mine["participants"], mine["percentile"]) == (3, 30, 5, 50.0)
        assert [(n["rank"], n["user_id"]) for n in mine["neighbours"]] == [(2, "u4"), (4, "u2")]


async def test_tie_first_on_lower_is_better(settings: Settings, redis_client) -> None:
    """Tie policy first works with negated scores: equal best times rank by who set them first."""
    board = Board(id="fastest", metric="m", operator=Operator.BEST, order=Order.LOWER, tie=Tie.FIRST, decimals=1)
    async with board_pipeline(settings, [board], utc("2026-12-04T12:00:00Z")) as pipeline:
        await pipeline.post_and_process([
            pipeline.event("a", 1500.5, "2026-12-04T10:00:00Z"),
            pipeline.event("b", 1500.5, "2026-12-04T09:00:00Z"),
            pipeline.event("c", 1400, "2026-12-04T11:00:00Z"),
            pipeline.event("a", 1500.5, "2026-12-04T08:00:00Z"),
        ])
        assert await pipeline.scores("fastest") == [(1, "c", 1400), (2, "a", 1500.5), (3, "b", 1500.5)]
        ranks = {user: (await pipeline.get(f"/v1/boards/fastest/users/{user}"))["rank"] for user in "abc"}
        assert ranks == {"a": 2, "b": 3, "c": 1}
