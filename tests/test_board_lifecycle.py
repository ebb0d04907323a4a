"""Board definitions over the admin API and CLI, period closing and archive reads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec

from services.ranker.closer import PeriodCloser
from shared.board_store import BoardStore
from shared.boards import Board, Operator, Reset, Tie
from shared.names import Names
from shared.settings import Settings
from tests.board_pipeline import board_pipeline, utc
from tests.conftest import service_env
from tests.helpers import wait_for

PUSHUPS = {"id": "push", "metric": "s", "operator": "sum", "reset": "weekly", "title": "Push-ups"}


async def test_admin_api_applies_boards(settings: Settings, redis_client) -> None:
    """Admin keys create and update boards idempotently; other processes see changes within seconds."""
    seed = Board(id="seed", metric="s", operator=Operator.SUM)
    async with board_pipeline(settings, [seed], utc("2026-12-04T12:00:00Z")) as pipeline:
        admin = {"Authorization": f"Bearer {pipeline.admin_key}"}
        other_process = BoardStore(pipeline.pool, poll_interval_s=0.1)
        await other_process.open()
        poller = asyncio.create_task(other_process.run())
        try:
            forbidden = await pipeline.http.post("/v1/admin/boards", json={"board": [PUSHUPS]}, headers={"Authorization": f"Bearer {pipeline.key}"})
            assert forbidden.status == 403

            created = await pipeline.http.post("/v1/admin/boards", json={"board": [PUSHUPS]}, headers=admin)
            assert await created.json() == {"created": ["push"], "updated": [], "unchanged": []}
            again = await pipeline.http.post("/v1/admin/boards", json={"board": [PUSHUPS]}, headers=admin)
            assert await again.json() == {"created": [], "updated": [], "unchanged": ["push"]}

            async def other_process_sees(title: str) -> bool:
                board = other_process.registry.by_id.get("push")
                return board is not None and board.title == title

            await wait_for(lambda: other_process_sees("Push-ups"), timeout_s=5, what="the new board in another registry")

            [scored] = await pipeline.post_and_process([pipeline.event("a", 3, "2026-12-04T11:00:00Z", metric="s")])
            assert scored["status"] == "accepted"
            assert await pipeline.scores("push") == [(1, "a", 3)]
            renamed = await pipeline.http.put("/v1/admin/boards/push", json={**PUSHUPS, "title": "Push-ups this week"}, headers=admin)
            assert await renamed.json() == {"created": [], "updated": ["push"], "unchanged": []}
            await wait_for(lambda: other_process_sees("Push-ups this week"), timeout_s=5, what="the new title in another registry")

            changed = await pipeline.http.put("/v1/admin/boards/push", json={**PUSHUPS, "operator": "best"}, headers=admin)
            assert changed.status == 409
            problem = await changed.json()
            assert problem["detail"] == (
                "board 'push' has scores, so operator cannot change; create a new board with a new id instead "
                "(title, unit and retention_s may change)"
            )

            invalid = await pipeline.http.post("/v1/admin/boards", json={"board": [{**PUSHUPS, "reset": "every tuesday"}]}, headers=admin)
            assert invalid.status == 400
            assert (await invalid.json())["detail"].startswith("body.board[0]: reset 'every tuesday' is not a valid cron expression")

            listed = await pipeline.http.get("/v1/admin/boards", headers=admin)
            assert [board["id"] for board in (await listed.json())["boards"]] == ["push", "seed"]
            public = await pipeline.get("/v1/boards/push")
            assert (public["title"], public["reset"], public["status"]) == ("Push-ups this week", "weekly", "open")
        finally:
            poller.cancel()


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], env=service_env(settings), capture_output=True, text=True, timeout=60
    )


async def test_cli_boards_apply_and_list(settings: Settings, tmp_path: Path) -> None:
    """`rankstream boards apply` is idempotent and `boards list` shows the stored boards."""
    boards_file = tmp_path / "boards.toml"
    boards_file.write_text('[[board]]\nid = "plank"\nmetric = "plank_s"\noperator = "best"\nreset = "0 6 * * 1"\ntimezone = "Europe/Berlin"\n')
    first = run_cli(settings, "boards", "apply", str(boards_file))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["created: plank", "updated: -", "unchanged: -"]
    second = run_cli(settings, "boards", "apply", str(boards_file))
    assert second.stdout.splitlines() == ["created: -", "updated: -", "unchanged: plank"]
    listed = run_cli(settings, "boards", "list")
    assert listed.stdout.splitlines()[1] == "plank\tplank_s\tbest\thigher\t0 6 * * 1\tEurope/Berlin\tglobal\tshared\t"

    boards_file.write_text('[[board]]\nid = "plank"\nmetric = "plank_s"\noperator = "bestest"\n')
    invalid = run_cli(settings, "boards", "apply", str(boards_file))
    assert invalid.returncode == 2
    assert "board[0].operator: Invalid enum value 'bestest'" in invalid.stderr


async def test_closed_period_archived_and_served(settings: Settings, redis_client) -> None:
    """After its grace a period is archived once, announced final, and read from PostgreSQL when Redis drops it."""
    board = Board(id="day", metric="m", operator=Operator.SUM, reset=Reset.DAILY, tie=Tie.FIRST, retention_s=600)
    async with board_pipeline(settings, [board], utc("2026-12-03T20:00:00Z")) as pipeline:
        await pipeline.post_and_process([
            pipeline.event("a", 10, "2026-12-03T09:00:00Z", display_name="Ada"),
            pipeline.event("b", 10, "2026-12-03T08:00:00Z"),
            pipeline.event("c", 5, "2026-12-03T10:00:00Z"),
        ])
        live = await pipeline.get("/v1/boards/day/top", period="2026-12-03")
        closer = PeriodCloser(pipeline.client, pipeline.pool, pipeline.names, pipeline.store.registry, pipeline.clock, settle_s=2)

        pipeline.clock.set(utc("2026-12-04T01:00:01Z"))
        assert await closer.close_due() == 0

        pubsub = pipeline.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(pipeline.names.rank_changes_channel)
        pipeline.clock.set(utc("2026-12-04T01:00:03Z"))
        assert await closer.close_due() == 1
        assert await closer.close_due() == 0
        message = None
        for _ in range(40):
            message = await pubsub.get_message(timeout=0.05)
            if message is not None:
                break
        await pubsub.aclose()
        assert message is not None
        assert msgspec.json.decode(message["data"]) == {"board": "day", "period": "2026-12-03", "seq": 2, "changes": [], "final": True}

        names: Names = pipeline.names
        assert 0 < await pipeline.client.ttl(names.board_scores("day", "2026-12-03")) <= 600
        rows = await pipeline.pool.fetch("SELECT user_id, sort_score FROM board_results WHERE board_id = 'day' ORDER BY user_id")
        assert [(row["user_id"], row["sort_score"]) for row in rows] == [("a", 10), ("b", 10), ("c", 5)]

        await pipeline.client.delete(names.board_scores("day", "2026-12-03"))
        archived = await pipeline.get("/v1/boards/day/top", period="2026-12-03")
        assert archived == live | {"status": "final", "resets_at": "2026-12-05T00:00:00Z"}
        assert [(entry["rank"], entry["user_id"]) for entry in archived["entries"]] == [(1, "b"), (2, "a"), (3, "c")]
        mine = await pipeline.get("/v1/boards/day/users/a", period="2026-12-03", around=1)
        assert (mine["rank"], mine["score"], mine["display_name"], mine["participants"]) == (2, 10, "Ada", 3)
        assert [n["user_id"] for n in mine["neighbours"]] == ["b", "c"]


async def test_running_ranker_picks_up_new_board(settings: Settings, redis_client) -> None:
    """A running ranker applies events of a new metric to a board created after it started, within seconds."""
    from services.ranker.run import run_ranker

    first = Board(id="first", metric="m", operator=Operator.SUM)
    async with board_pipeline(settings, [first], utc("2026-12-04T12:00:00Z")) as pipeline:
        stop = asyncio.Event()
        ranker = asyncio.create_task(run_ranker(settings, stop=stop, clock=pipeline.clock))
        try:
            await pipeline.post([pipeline.event("a", 1, "2026-12-04T11:00:00Z")])
            await wait_for(lambda: _has_scores(pipeline, "first"), timeout_s=10, what="the first board")

            admin = {"Authorization": f"Bearer {pipeline.admin_key}"}
            response = await pipeline.http.post("/v1/admin/boards", json=[{"id": "second", "metric": "rowing_m", "operator": "count"}], headers=admin)
            assert response.status == 200

            # Post one event every 0.25 s, at most 20, until the new board counts one.
            for _attempt in range(20):
                [result] = await pipeline.post([pipeline.event("a", 1, "2026-12-04T11:00:00Z", metric="rowing_m")])
                assert result["status"] == "accepted", result
                await asyncio.sleep(0.25)
                if await _has_scores(pipeline, "second"):
                    break
            assert await _has_scores(pipeline, "second"), "the running ranker did not apply the new board within 5 s"
        finally:
            stop.set()
            await asyncio.wait_for(ranker, timeout=20)


async def _has_scores(pipeline, board_id: str) -> bool:
    return bool(await pipeline.scores(board_id))
