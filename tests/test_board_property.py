"""Property: ranks served from Redis equal a reference computed by SQL window functions over PostgreSQL."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st

from shared.boards import Board, Operator, Order, Reset, Scope, Tie, WeekStart
from shared.settings import Settings
from tests.board_pipeline import Pipeline, board_pipeline
from tests.reference import reference_standings

# Around the end of daylight-saving time in Europe (Oct 25) and the US (Nov 1).
BASE = datetime(2026, 10, 20, tzinfo=timezone.utc)
GROUPS = ["club-a", "club-b"]
_examples = itertools.count()


def board_set(suffix: str, metric: str) -> list[Board]:
    """Boards that cover every operator, order, reset kind, tie policy and scope, in several time zones."""
    return [
        Board(id=f"sum-ny-{suffix}", metric=metric, operator=Operator.SUM, reset=Reset.DAILY, timezone="America/New_York", decimals=1),
        Board(
            id=f"best-berlin-{suffix}", metric=metric, operator=Operator.BEST, order=Order.LOWER, reset=Reset.WEEKLY,
            timezone="Europe/Berlin", tie=Tie.FIRST, decimals=1, late_grace_s=1800,
        ),
        Board(id=f"latest-kolkata-{suffix}", metric=metric, operator=Operator.LATEST, reset=Reset.MONTHLY, timezone="Asia/Kolkata", decimals=2),
        Board(id=f"count-{suffix}", metric=metric, operator=Operator.COUNT, tie=Tie.FIRST),
        Board(
            id=f"sum-clubs-{suffix}", metric=metric, operator=Operator.SUM, reset=Reset.WEEKLY, week_start=WeekStart.SUNDAY,
            scope=Scope.GROUP, decimals=1,
        ),
        Board(id=f"best-auckland-{suffix}", metric=metric, operator=Operator.BEST, reset=Reset.DAILY, timezone="Pacific/Auckland", decimals=1),
    ]


event_strategy = st.fixed_dictionaries({
    "user": st.sampled_from(["u1", "u2", "u3", "u4"]),
    "tenths": st.integers(min_value=0, max_value=12),
    "occurred_quarter_hours": st.integers(min_value=0, max_value=14 * 24 * 4),
    "delay_minutes": st.sampled_from([0, 1, 20, 45, 70, 200]),
    "groups": st.lists(st.sampled_from(GROUPS), max_size=2),
    "repeat": st.booleans(),
})


async def served_standings(pipeline: Pipeline, board: Board) -> dict:
    """Return every non-empty ranking period of ``board`` that Redis holds, read through the API."""
    served = {}
    pattern = f"{pipeline.names.namespace}:{{board:{board.id}*:scores"
    async for key in pipeline.client.scan_iter(match=pattern, count=1000):
        tag = key.decode().split("{board:", 1)[1].rsplit("}", 1)[0]
        ranking, period = tag.split(":", 1)
        group = ranking.split("/", 1)[1] if "/" in ranking else None
        standings = await pipeline.scores(board.id, period, group=group)
        if standings:
            served[(group, period)] = standings
    return served


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(event_strategy, min_size=10, max_size=30), hidden=st.sampled_from([None, "u2"]))
async def test_redis_ranks_match_sql_reference(settings: Settings, redis_client, events: list[dict], hidden: str | None) -> None:
    """Random events across operators, zones and periods rank in Redis exactly as SQL ranks them."""
    number = next(_examples)
    suffix, metric = f"x{number}", f"m{number}"
    boards = board_set(suffix, metric)
    async with board_pipeline(settings, boards, BASE) as pipeline:
        if hidden is not None:
            response = await pipeline.http.put(f"/v1/admin/hidden/{suffix}-{hidden}", headers={"Authorization": f"Bearer {pipeline.admin_key}"})
            assert response.status == 200

        previous = None
        for spec in events:
            occurred = BASE + timedelta(minutes=15 * spec["occurred_quarter_hours"])
            pipeline.clock.set(occurred + timedelta(minutes=spec["delay_minutes"]))
            event = previous if spec["repeat"] and previous is not None else pipeline.event(
                f"{suffix}-{spec['user']}", spec["tenths"] / 10, occurred.isoformat(), metric=metric, groups=spec["groups"]
            )
            # Event ids must differ between examples, which share one stream.
            event["event_id"] = event["event_id"] if event["event_id"].startswith(suffix) else f"{suffix}-{event['event_id']}"
            await pipeline.post([event])
            previous = event
        await pipeline.process()

        async with pipeline.pool.acquire() as connection:
            for board in boards:
                expected = await reference_standings(connection, board)
                served = await served_standings(pipeline, board)
                assert served == expected, board.id
