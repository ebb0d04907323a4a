"""Closing periods: after a period's late grace, archive its standings and announce it final.

The ranker records every ranking period it touches in ``Names.closing_periods``,
scored by the instant its late grace ends. The closer waits ``settle_s`` more,
so requests that ingest accepted just before still reach the stream. Then it
notes the newest stream id as the period's close mark and waits until the
ranker group has applied every entry up to it. After that it writes
the standings to ``board_results``, publishes one BoardUpdate with
``final=True`` and lets the period's keys expire after the board's
``retention_s``. Each step is idempotent, so several rankers may run it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog

from services.ranker.group_progress import group_passed, last_stream_id
from services.ranker.script import OCCURRED_OFFSET_MS, epoch_ms, live_keys
from shared.archive import ResultRow, write_results
from shared.boards import Board, BoardRegistry, Tie, ranking_id
from shared.clock import Clock
from shared.names import RANKER_GROUP, Names
from shared.schema import BoardUpdate

log = structlog.get_logger(__name__)

FINAL_MARK = "final"
MAX_PERIODS_PER_PASS = 100


class PeriodCloser:
    """Archive ranking periods whose late grace has ended."""

    def __init__(
        self,
        client: redis.Redis,
        pool: asyncpg.Pool,
        names: Names,
        boards: BoardRegistry,
        clock: Clock,
        *,
        settle_s: float = 2.0,
        interval_s: float = 1.0,
    ) -> None:
        self.client = client
        self.pool = pool
        self.names = names
        self.boards = boards
        self.clock = clock
        self.settle_s = settle_s
        self.interval_s = interval_s
        self.periods_closed = 0

    async def run(self) -> None:
        """Close due periods every ``interval_s`` until cancelled; log and retry failures."""
        while True:
            try:
                await self.close_due()
            except (OSError, redis.RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("period closing failed, retrying", error=str(error), retry_in_s=self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def close_due(self) -> int:
        """Close every period that is due now; return how many were archived in this pass."""
        due_before = self.clock() - timedelta(seconds=self.settle_s)
        members = await self.client.zrangebyscore(
            self.names.closing_periods, "-inf", epoch_ms(due_before), start=0, num=MAX_PERIODS_PER_PASS
        )
        closed = 0
        for member in members:
            board_id, group, period = json.loads(member)
            board = self.boards.by_id.get(board_id)
            if board is None:
                log.warning("closing period of unknown board skipped", board=board_id, group=group, period=period)
                continue
            if await self.close_period(board, group, period):
                closed += 1
        return closed

    async def close_period(self, board: Board, group: str | None, period: str) -> bool:
        """Archive one period once the ranker has applied everything up to its close mark."""
        names = self.names
        ranking = ranking_id(board.id, group)
        mark_key = names.board_close_mark(ranking, period)
        member = json.dumps([board.id, group, period])

        # Note the stream position the period waits for, once.
        await self.client.set(mark_key, await last_stream_id(self.client, names), nx=True)
        mark = (await self.client.get(mark_key)).decode()
        if mark != FINAL_MARK and not await group_passed(self.client, names, RANKER_GROUP, mark):
            return False

        # Archive, announce once, then let the keys expire.
        archived = False
        if mark != FINAL_MARK:
            rows = await self._read_rows(board, ranking, period)
            async with self.pool.acquire() as connection:
                archived = await write_results(connection, board, group, period, rows)
            previous = await self.client.getset(mark_key, FINAL_MARK)
            if previous is not None and previous.decode() != FINAL_MARK:
                await self._publish_final(board, group, ranking, period)
            log.info("period closed", board=board.id, group=group, period=period, participants=len(rows), archived=archived)
            self.periods_closed += 1
        async with self.client.pipeline(transaction=False) as pipe:
            for key in [*live_keys(names, ranking, period), mark_key]:
                pipe.expire(key, board.retention_s)
            pipe.zrem(names.closing_periods, member)
            await pipe.execute()
        return archived

    async def _read_rows(self, board: Board, ranking: str, period: str) -> list[ResultRow]:
        names = self.names
        scores = await self.client.zrange(names.board_scores(ranking, period), 0, -1, withscores=True)
        users = [member for member, _score in scores]
        if not users:
            return []
        display_names = await self.client.hmget(names.display_names, users)
        reached: list[bytes | None] = [None] * len(users)
        if board.tie is Tie.FIRST:
            reached = await self.client.hmget(names.board_reached(ranking, period), users)
        return [
            ResultRow(
                user_id=user.decode(),
                sort_score=int(score),
                reached_ms=int(when) - OCCURRED_OFFSET_MS if when is not None else 0,
                display_name=name.decode() if name is not None else None,
            )
            for (user, score), name, when in zip(scores, display_names, reached, strict=True)
        ]

    async def _publish_final(self, board: Board, group: str | None, ranking: str, period: str) -> None:
        seq = await self.client.incr(self.names.board_seq(ranking, period))
        update = BoardUpdate(board=board.id, period=period, seq=seq, changes=[], group=group, final=True)
        await self.client.publish(self.names.rank_changes_channel, msgspec.json.encode(update))
