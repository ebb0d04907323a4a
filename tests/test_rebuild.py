"""Rebuilding sorted sets from PostgreSQL: after a loss, under concurrent ingest, and at ranker start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

from services.ranker.rebuild import Rebuilder
from services.ranker.run import run_ranker
from shared.boards import Board, Operator, Order, Reset, Scope, Tie
from shared.settings import Settings
from tests.board_pipeline import Pipeline, board_pipeline, utc
from tests.conftest import service_env
from tests.helpers import wait_for
from tests.reference import reference_standings

NOW = utc("2026-12-04T12:00:00Z")
BOARDS = [
    Board(id="sum-week", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY, decimals=1),
    Board(id="best-first", metric="m", operator=Operator.BEST, order=Order.LOWER, tie=Tie.FIRST, decimals=1),
    Board(id="latest-day", metric="m", operator=Operator.LATEST, reset=Reset.DAILY, timezone="Europe/Berlin", decimals=1),
    Board(id="count-clubs", metric="m", operator=Operator.COUNT, scope=Scope.GROUP),
]


def sample_event(pipeline: Pipeline, number: int) -> dict:
    """A deterministic event: five athletes, two clubs, values with one decimal, times over two days."""
    occurred = NOW - timedelta(minutes=7 * (number % 400))
    return pipeline.event(
        f"u{number % 5}", (number * 37 % 50) / 10, occurred.isoformat().replace("+00:00", "Z"),
        groups=["club-a"] if number % 3 else ["club-a", "club-b"],
    )


async def assert_matches_reference(pipeline: Pipeline) -> None:
    async with pipeline.pool.acquire() as connection:
        for board in BOARDS:
            expected = await reference_standings(connection, board)
            assert expected, board.id
            for (group, period), standings in expected.items():
                assert await pipeline.scores(board.id, period, group=group) == standings, (board.id, group, period)


async def test_rebuild_restores_lost_keys(settings: Settings, redis_client) -> None:
    """Deleted board keys come back exactly from the persisted events."""
    async with board_pipeline(settings, BOARDS, NOW) as pipeline:
        await pipeline.post_and_process([sample_event(pipeline, number) for number in range(60)])
        await assert_matches_reference(pipeline)
        async for key in pipeline.client.scan_iter(match=f"{settings.namespace}:{{board:*", count=1000):
            await pipeline.client.delete(key)
        assert await pipeline.scores("sum-week") == []

        progress: list[tuple[int, int]] = []
        report = await Rebuilder(pipeline.client, pipeline.pool, pipeline.names, pipeline.store.registry).rebuild(
            progress=lambda done, total: progress.append((done, total))
        )
        assert report.events == 60
        assert progress[-1] == (60, 60)
        await assert_matches_reference(pipeline)


async def test_rebuild_under_concurrent_ingest(settings: Settings, redis_client) -> None:
    """A rebuild while events keep arriving loses and doubles nothing: the boards equal the reference."""
    async with board_pipeline(settings, BOARDS, NOW) as pipeline:
        await pipeline.post_and_process([sample_event(pipeline, number) for number in range(100)])
        # Damage the live standings so only a real rebuild can repair them.
        await pipeline.client.delete(pipeline.names.board_scores("sum-week", "2026-W49"))

        posting_done = asyncio.Event()

        async def post_more() -> None:
            deadline = time.monotonic() + 20
            for start in range(100, 400, 10):
                assert time.monotonic() < deadline, "posting took over 20 s"
                await pipeline.post([sample_event(pipeline, number) for number in range(start, start + 10)])
                await asyncio.sleep(0.005)
            posting_done.set()

        async def pump() -> None:
            while not posting_done.is_set():
                await pipeline.process()
                await asyncio.sleep(0.01)
            await pipeline.process()

        rebuilder = Rebuilder(pipeline.client, pipeline.pool, pipeline.names, pipeline.store.registry, persist_wait_s=20)
        poster, pumper = asyncio.create_task(post_more()), asyncio.create_task(pump())
        await asyncio.sleep(0.05)
        report = await rebuilder.rebuild()
        await asyncio.wait_for(asyncio.gather(poster, pumper), timeout=30)

        assert report.events >= 100
        assert report.events < 400, "the rebuild started after posting ended, so nothing ran concurrently"
        assert await pipeline.pool.fetchval("SELECT count(*) FROM events") == 400
        await assert_matches_reference(pipeline)


async def test_ranker_rebuilds_when_redis_lost(settings: Settings, redis_client) -> None:
    """A ranker that starts on an empty Redis while PostgreSQL contains events rebuilds before serving."""
    async with board_pipeline(settings, BOARDS, NOW) as pipeline:
        await pipeline.post_and_process([sample_event(pipeline, number) for number in range(40)])
        async for key in pipeline.client.scan_iter(match=f"{settings.namespace}:*", count=1000):
            await pipeline.client.delete(key)

        stop = asyncio.Event()
        ranker = asyncio.create_task(run_ranker(settings, stop=stop))
        try:
            async def rebuilt() -> bool:
                return bool(await pipeline.scores("sum-week", "2026-W49"))

            await wait_for(rebuilt, timeout_s=20, what="the startup rebuild")
            await assert_matches_reference(pipeline)
        finally:
            stop.set()
            await asyncio.wait_for(ranker, timeout=20)


async def test_running_ranker_rebuilds_after_flush(settings: Settings, redis_client) -> None:
    """A running ranker notices that Redis lost its keys and rebuilds them without a restart."""
    async with board_pipeline(settings, BOARDS, NOW) as pipeline:
        await pipeline.post_and_process([sample_event(pipeline, number) for number in range(40)])
        expected = await pipeline.scores("sum-week", "2026-W49")
        stop = asyncio.Event()
        ranker = asyncio.create_task(run_ranker(settings, stop=stop))
        try:
            await wait_for(lambda: pipeline.client.exists(pipeline.names.boards_built), timeout_s=20, what="the boards marker")
            async for key in pipeline.client.scan_iter(match=f"{settings.namespace}:*", count=1000):
                await pipeline.client.delete(key)
            assert await pipeline.scores("sum-week", "2026-W49") == []

            async def rebuilt() -> bool:
                return await pipeline.scores("sum-week", "2026-W49") == expected

            await wait_for(rebuilt, timeout_s=30, what="the rebuild after the flush")
            await assert_matches_reference(pipeline)
        finally:
            stop.set()
            await asyncio.wait_for(ranker, timeout=20)


async def test_cli_rebuild_one_board_period(settings: Settings, redis_client) -> None:
    """`rankstream rebuild --board B --period P` rebuilds that period only."""
    async with board_pipeline(settings, BOARDS, NOW) as pipeline:
        await pipeline.post_and_process([sample_event(pipeline, number) for number in range(30)])
        before = await pipeline.scores("sum-week", "2026-W49")
        await pipeline.client.delete(pipeline.names.board_scores("sum-week", "2026-W49"))
        await pipeline.client.delete(pipeline.names.board_scores("count-clubs/club-a", "all"))

        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "rebuild", "--board", "sum-week", "--period", "2026-W49", "--quiet"],
            env=service_env(settings), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "rebuilt 1 board periods from 30 events; applied 0 events that arrived meanwhile"
        assert await pipeline.scores("sum-week", "2026-W49") == before
        assert await pipeline.scores("count-clubs", group="club-a") == []
