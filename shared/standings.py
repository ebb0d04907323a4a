"""Reading standings from a board period's sorted set, with shared ranks for ties.

Every board's sorted set ranks by descending score (see ``shared.boards``).
Equal scores share a rank and the next rank skips (1, 2, 2, 4): an athlete's
rank is one more than the number of strictly higher scores. Within a tie,
athletes are listed in descending order of user id, which is the order Redis
returns equal scores in for a reversed range.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as redis

from shared.boards import Board
from shared.names import Names


class Standing(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's place on a board period."""

    rank: int
    user_id: str
    score: float | int
    display_name: str | None = None


class UserStanding(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's place with neighbours above and below."""

    rank: int
    user_id: str
    score: float | int
    display_name: str | None
    participants: int
    neighbours: list[Standing]


def _assign_ranks(
    board: Board, rows: list[tuple[bytes, float]], start: int, first_rank: int, names: list[bytes | None]
) -> list[Standing]:
    """Rank rows that start at 0-based position ``start``; the first row's rank is ``first_rank``."""
    standings: list[Standing] = []
    previous_score: float | None = None
    rank = first_rank
    for position, ((member, score), name) in enumerate(zip(rows, names, strict=True)):
        if previous_score is not None and score != previous_score:
            rank = start + position + 1
        previous_score = score
        standings.append(
            Standing(
                rank=rank,
                user_id=member.decode(),
                score=board.display_score(score),
                display_name=name.decode() if name is not None else None,
            )
        )
    return standings


async def _ranked_range(client: redis.Redis, names: Names, board: Board, period: str, start: int, stop: int) -> list[Standing]:
    key = names.board_scores(board.id, period)
    rows = await client.zrevrange(key, start, stop, withscores=True)
    if not rows:
        return []
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(key, f"({rows[0][1]!r}", "+inf")
        pipe.hmget(names.display_names, [member for member, _ in rows])
        higher, display_names = await pipe.execute()
    return _assign_ranks(board, rows, start, higher + 1, display_names)


async def read_top(client: redis.Redis, names: Names, board: Board, period: str, limit: int, offset: int = 0) -> list[Standing]:
    """Return up to ``limit`` standings starting at position ``offset`` (0-based)."""
    if limit <= 0:
        return []
    return await _ranked_range(client, names, board, period, offset, offset + limit - 1)


async def count_participants(client: redis.Redis, names: Names, board: Board, period: str) -> int:
    return await client.zcard(names.board_scores(board.id, period))


async def read_user(
    client: redis.Redis, names: Names, board: Board, period: str, user_id: str, around: int = 0
) -> UserStanding | None:
    """Return one athlete's standing with ``around`` neighbours each side, or None if they have no score."""
    key = names.board_scores(board.id, period)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zscore(key, user_id)
        pipe.zrevrank(key, user_id)
        pipe.zcard(key)
        pipe.hget(names.display_names, user_id)
        score, position, participants, display_name = await pipe.execute()
    if score is None or position is None:
        return None
    higher = await client.zcount(key, f"({score!r}", "+inf")
    neighbours: list[Standing] = []
    if around > 0:
        neighbours = await _ranked_range(client, names, board, period, max(0, position - around), position + around)
        neighbours = [standing for standing in neighbours if standing.user_id != user_id]
    return UserStanding(
        rank=higher + 1,
        user_id=user_id,
        score=board.display_score(score),
        display_name=display_name.decode() if display_name is not None else None,
        participants=participants,
        neighbours=neighbours,
    )
