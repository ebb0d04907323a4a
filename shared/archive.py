"""Final standings of closed periods in PostgreSQL (``board_results``), written and read.

Reads compute ranks with SQL window functions over the stored scores and leave
out athletes hidden now, so an archived period reads in the same shape and
order as a live one: ``rank()`` over the score for tie policy ``shared``
(listed by user id descending within a tie), ``row_number()`` over score, then
reached time, then user id for ``first``. User ids compare byte-wise
(``COLLATE "C"``), as Redis compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.boards import Board, Tie
from shared.standings import Standing, UserRank, UserStanding, percentile_rank


@dataclass(frozen=True)
class ResultRow:
    user_id: str
    sort_score: int
    reached_ms: int
    display_name: str | None


async def write_results(
    connection: asyncpg.Connection, board: Board, group: str | None, period: str, rows: Sequence[ResultRow]
) -> bool:
    """Store a period's final standings once; return False when it was archived before."""
    group_key = group or ""
    async with connection.transaction():
        inserted = await connection.fetchval(
            "INSERT INTO board_periods (board_id, group_key, period, participants) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING true",
            board.id, group_key, period, len(rows),
        )
        if not inserted:
            return False
        await connection.executemany(
            "INSERT INTO board_results (board_id, group_key, period, user_id, sort_score, reached_ms, display_name)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(board.id, group_key, period, row.user_id, row.sort_score, row.reached_ms, row.display_name) for row in rows],
        )
    return True


async def is_archived(pool: asyncpg.Pool | asyncpg.Connection, board: Board, group: str | None, period: str) -> bool:
    return await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM board_periods WHERE board_id = $1 AND group_key = $2 AND period = $3)",
        board.id, group or "", period,
    )


def _ranked_query(board: Board) -> str:
    if board.tie is Tie.FIRST:
        order = 'sort_score DESC, reached_ms, user_id COLLATE "C"'
        rank = f"row_number() OVER (ORDER BY {order})"
    else:
        order = 'sort_score DESC, user_id COLLATE "C" DESC'
        rank = "rank() OVER (ORDER BY sort_score DESC)"
    return f"""
        WITH visible AS (
            SELECT r.user_id, r.sort_score, r.reached_ms, r.display_name
            FROM board_results r
            WHERE r.board_id = $1 AND r.group_key = $2 AND r.period = $3
              AND NOT EXISTS (SELECT 1 FROM hidden_athletes h WHERE h.user_id = r.user_id)
        )
        SELECT user_id, sort_score, display_name,
               {rank} AS rank,
               row_number() OVER (ORDER BY {order}) - 1 AS position,
               count(*) OVER (PARTITION BY sort_score) AS tied,
               count(*) OVER () AS participants
        FROM visible
    """


def _standing(board: Board, row: asyncpg.Record) -> Standing:
    return Standing(rank=row["rank"], user_id=row["user_id"], score=board.display_score(row["sort_score"]), display_name=row["display_name"])


async def archived_top(pool: asyncpg.Pool, board: Board, group: str | None, period: str, limit: int, offset: int) -> list[Standing]:
    """Return up to ``limit`` standings of an archived period from visible position ``offset`` (0-based)."""
    query = f"SELECT * FROM ({_ranked_query(board)}) ranked WHERE position >= $4 ORDER BY position LIMIT $5"
    rows = await pool.fetch(query, board.id, group or "", period, offset, limit)
    return [_standing(board, row) for row in rows]


async def archived_participants(pool: asyncpg.Pool, board: Board, group: str | None, period: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM board_results r WHERE board_id = $1 AND group_key = $2 AND period = $3"
        " AND NOT EXISTS (SELECT 1 FROM hidden_athletes h WHERE h.user_id = r.user_id)",
        board.id, group or "", period,
    )


async def archived_user(
    pool: asyncpg.Pool, board: Board, group: str | None, period: str, user_id: str, around: int
) -> UserStanding | None:
    """Return one athlete's archived standing with ``around`` neighbours each side, or None."""
    query = f"SELECT * FROM ({_ranked_query(board)}) ranked WHERE user_id = $4"
    row = await pool.fetchrow(query, board.id, group or "", period, user_id)
    if row is None:
        return None
    neighbours: list[Standing] = []
    if around > 0:
        start = max(0, row["position"] - around)
        page = await archived_top(pool, board, group, period, row["position"] - start + around + 1, start)
        neighbours = [standing for standing in page if standing.user_id != user_id]
    tied = 1 if board.tie is Tie.FIRST else row["tied"]
    return UserStanding(
        rank=row["rank"],
        user_id=user_id,
        score=board.display_score(row["sort_score"]),
        display_name=row["display_name"],
        participants=row["participants"],
        neighbours=neighbours,
        percentile=percentile_rank(row["participants"], row["rank"], tied),
    )


async def archived_ranks(pool: asyncpg.Pool, board: Board, group: str | None, period: str, user_ids: list[str]) -> list[UserRank]:
    query = f"SELECT user_id, rank, sort_score FROM ({_ranked_query(board)}) ranked WHERE user_id = any($4::text[])"
    found = {row["user_id"]: row for row in await pool.fetch(query, board.id, group or "", period, user_ids)}
    ranks = []
    for user_id in user_ids:
        row = found.get(user_id)
        if row is None:
            ranks.append(UserRank(user_id=user_id, rank=None, score=None))
        else:
            ranks.append(UserRank(user_id=user_id, rank=row["rank"], score=board.display_score(row["sort_score"])))
    return ranks
