"""Reading standings from a ranking period in Redis: top N, one athlete, many athletes.

Every board's sorted set ranks by descending score (see ``shared.boards``).

Tie policy ``shared``: equal scores share a rank and the next rank skips
(1, 2, 2, 4): an athlete's rank is one more than the number of visible
athletes with a strictly higher score. Within a tie, athletes are listed in
descending byte order of user id, the order Redis returns equal scores in for
a reversed range.

Tie policy ``first``: ranks are distinct and follow the ``order`` set that the
apply script keeps (score descending, then who reached it first, then user id
ascending), so ZRANK gives the place exactly.

Hidden athletes (``Names.hidden_users``) keep their scores but are left out of
lists and counts and take no rank. Each read fetches their positions, so a
read costs O(H log N) more for H hidden athletes: the set is meant for banned,
staff, test and opted-out accounts, not for most of a board.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as redis

from shared import raw_commands
from shared.boards import Board, Tie, ranking_id
from shared.names import Names

_MAX_SCORE_KEY = 2**53
# Width of "<score key>:<reached>:" at the start of an order-set member.
_ORDER_PREFIX_LENGTH = 17 + 1 + 16 + 1


class Standing(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's place on a board period."""

    rank: int
    user_id: str
    score: float | int
    display_name: str | None = None


class UserStanding(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's place with neighbours above and below.

    ``percentile`` is the percentile rank: the share of participants ranked
    below the athlete plus half of those tied with them, in percent (0-100).
    """

    rank: int
    user_id: str
    score: float | int
    display_name: str | None
    participants: int
    neighbours: list[Standing]
    percentile: float = 100.0


def percentile_rank(participants: int, rank: int, tied: int) -> float:
    """Return ``100 * (below + tied / 2) / participants``, rounded to two decimals."""
    below = participants - (rank - 1) - tied
    return round(100 * (below + tied / 2) / participants, 2)


def sort_score_of_member(member: str) -> int:
    """Return the sorted-set score encoded at the start of an order-set member."""
    sign, digits = member[0], int(member[1:17])
    return _MAX_SCORE_KEY - digits if sign == "1" else -digits


@dataclass
class _Ranking:
    """One ranking period's keys and the hidden athletes present in it."""

    client: redis.Redis
    names: Names
    board: Board
    key: str
    order_key: str
    reached_key: str
    hidden: dict[str, tuple[float, int]]  # user -> (score, list position)

    @property
    def first(self) -> bool:
        return self.board.tie is Tie.FIRST

    async def raw_range(self, start: int, stop: int) -> list[tuple[str, float]]:
        (reply,) = await raw_commands.read(self.client, [self.range_command(start, stop)])
        return self.parse_range(reply)

    def range_command(self, start: int, stop: int) -> tuple[Any, ...]:
        """Return the read of sorted-set positions ``start`` to ``stop``; :meth:`parse_range` reads its raw reply."""
        if self.first:
            return ("ZRANGE", self.order_key, start, stop)
        return ("ZREVRANGE", self.key, start, stop, "WITHSCORES")

    def parse_range(self, reply: list) -> list[tuple[str, float]]:
        if self.first:
            return [(member.decode()[_ORDER_PREFIX_LENGTH:], float(sort_score_of_member(member.decode()))) for member in reply]
        return [(member.decode(), score) for member, score in raw_commands.score_pairs(reply)]

    async def raw_position(self, user_id: str, score: float) -> int | None:
        if not self.first:
            return await self.client.zrevrank(self.key, user_id)
        reached = await self.client.hget(self.reached_key, user_id)
        if reached is None:
            return None
        return await self.client.zrank(self.order_key, order_member(int(score), reached.decode(), user_id))

    def hidden_before(self, position: int) -> int:
        return sum(1 for _score, hidden_position in self.hidden.values() if hidden_position < position)

    def hidden_above(self, score: float) -> int:
        return sum(1 for hidden_score, _position in self.hidden.values() if hidden_score > score)

    def hidden_equal(self, score: float) -> int:
        return sum(1 for hidden_score, _position in self.hidden.values() if hidden_score == score)


def order_member(sort_score: int, reached: str, user_id: str) -> str:
    """Return the order-set member of an athlete, as the apply script builds it."""
    key = f"1{_MAX_SCORE_KEY - sort_score:016d}" if sort_score >= 0 else f"2{-sort_score:016d}"
    return f"{key}:{reached}:{user_id}"


def _view(client: redis.Redis, names: Names, board: Board, period: str, group: str | None) -> _Ranking:
    ranking = ranking_id(board.id, group)
    return _Ranking(
        client, names, board,
        key=names.board_scores(ranking, period),
        order_key=names.board_order(ranking, period),
        reached_key=names.board_reached(ranking, period),
        hidden={},
    )


async def _open(client: redis.Redis, names: Names, board: Board, period: str, group: str | None) -> _Ranking:
    view = _view(client, names, board, period, group)
    await _find_hidden(view, await client.smembers(names.hidden_users))
    return view


async def _find_hidden(view: _Ranking, members: Iterable[bytes]) -> None:
    """Record in ``view`` where each hidden athlete with a score in the ranking period sits."""
    hidden_users = sorted(member.decode() for member in members)
    if not hidden_users:
        return
    client = view.client
    scores = await client.zmscore(view.key, hidden_users)
    for user_id, score in zip(hidden_users, scores, strict=True):
        if score is None:
            continue
        position = await view.raw_position(user_id, score)
        if position is not None:
            view.hidden[user_id] = (score, position)


def _raw_start(view: _Ranking, offset: int) -> int:
    """Map a position among visible athletes to a position in the sorted set."""
    start = offset
    for position in sorted(position for _score, position in view.hidden.values()):
        if position <= start:
            start += 1
        else:
            break
    return start


async def _visible_range(view: _Ranking, offset: int, limit: int) -> list[Standing]:
    start = _raw_start(view, offset)
    rows = await view.raw_range(start, start + limit - 1 + len(view.hidden))
    return await _standings_of_rows(view, offset, limit, rows)


async def _standings_of_rows(view: _Ranking, offset: int, limit: int, rows: list[tuple[str, float]]) -> list[Standing]:
    """Turn sorted-set rows that start at visible position ``offset`` into at most ``limit`` standings."""
    rows = [(user_id, score) for user_id, score in rows if user_id not in view.hidden][:limit]
    if not rows:
        return []
    # The names and, with shared ranks, the count above the first row depend only on the rows: one round trip.
    commands: list[tuple[Any, ...]] = [("HMGET", view.names.display_names, *[user_id for user_id, _score in rows])]
    if not view.first:
        commands.append(("ZCOUNT", view.key, f"({rows[0][1]!r}", "+inf"))
    replies = await raw_commands.read(view.client, commands)
    names = replies[0]
    rank = offset + 1 if view.first else replies[1] - view.hidden_above(rows[0][1]) + 1
    standings: list[Standing] = []
    previous_score: float | None = None
    for index, ((user_id, score), name) in enumerate(zip(rows, names, strict=True)):
        if view.first or (previous_score is not None and score != previous_score):
            rank = offset + index + 1
        previous_score = score
        standings.append(
            Standing(rank=rank, user_id=user_id, score=view.board.display_score(score), display_name=name.decode() if name is not None else None)
        )
    return standings


async def read_top(
    client: redis.Redis, names: Names, board: Board, period: str, limit: int, offset: int = 0, *, group: str | None = None
) -> list[Standing]:
    """Return up to ``limit`` visible standings starting at visible position ``offset`` (0-based)."""
    standings, _participants = await read_top_page(client, names, board, period, limit, offset, group=group)
    return standings


async def read_top_page(
    client: redis.Redis, names: Names, board: Board, period: str, limit: int, offset: int = 0, *, group: str | None = None
) -> tuple[list[Standing], int]:
    """Return what :func:`read_top` returns and the number of visible athletes, as one page of a board needs both."""
    view = _view(client, names, board, period, group)
    # Usually no athlete is hidden, so the hidden set, the rows and the count
    # come in one round trip. When one is, the rows are read again around them.
    hidden_members, total, reply = await raw_commands.read(
        client, [("SMEMBERS", names.hidden_users), ("ZCARD", view.key), view.range_command(offset, offset + max(limit, 1) - 1)]
    )
    if hidden_members:
        await _find_hidden(view, hidden_members)
    participants = total - len(view.hidden)
    if limit <= 0:
        return [], participants
    if view.hidden:
        return await _visible_range(view, offset, limit), participants
    return await _standings_of_rows(view, offset, limit, view.parse_range(reply)), participants


async def count_participants(client: redis.Redis, names: Names, board: Board, period: str, *, group: str | None = None) -> int:
    """Return how many visible athletes have a score in the ranking period."""
    view = await _open(client, names, board, period, group)
    return await client.zcard(view.key) - len(view.hidden)


async def _standing_of(
    view: _Ranking, user_id: str, score: float, participants: int, position: int | None = None
) -> tuple[int, int, float] | None:
    """Return (rank, visible position, percentile) of a visible athlete with ``score``.

    ``position`` is the athlete's place in the sorted set when the caller read it already.
    """
    if position is None:
        position = await view.raw_position(user_id, score)
    if position is None:
        return None
    visible_position = position - view.hidden_before(position)
    if view.first:
        return visible_position + 1, visible_position, percentile_rank(participants, visible_position + 1, 1)
    higher, equal = await _counts(view, score)
    rank = higher + 1
    return rank, visible_position, percentile_rank(participants, rank, equal)


async def _counts(view: _Ranking, score: float) -> tuple[int, int]:
    async with view.client.pipeline(transaction=False) as pipe:
        pipe.zcount(view.key, f"({score!r}", "+inf")
        pipe.zcount(view.key, repr(score), repr(score))
        higher, equal = await pipe.execute()
    return higher - view.hidden_above(score), equal - view.hidden_equal(score)


async def read_user(
    client: redis.Redis, names: Names, board: Board, period: str, user_id: str, around: int = 0, *, group: str | None = None
) -> UserStanding | None:
    """Return one athlete's standing with ``around`` neighbours each side, or None if unranked or hidden.

    With shared ranks this takes three round trips when no athlete is hidden:
    the athlete's score and place, then the rank counts and the neighbours'
    rows, then the neighbours' names.
    """
    view = _view(client, names, board, period, group)
    commands: list[tuple[Any, ...]] = [
        ("SMEMBERS", names.hidden_users), ("ZSCORE", view.key, user_id), ("ZCARD", view.key), ("HGET", names.display_names, user_id)
    ]
    if not view.first:
        # With shared ranks the place needs no score, so it comes in the same round trip.
        commands.append(("ZREVRANK", view.key, user_id))
    replies = await raw_commands.read(client, commands)
    hidden_members, raw_score, total, display_name = replies[:4]
    score = None if raw_score is None else float(raw_score)
    if hidden_members:
        await _find_hidden(view, hidden_members)
    # A hidden athlete with a score is in view.hidden, and one without a score gets None anyway.
    if score is None or user_id in view.hidden:
        return None
    participants = total - len(view.hidden)
    if view.first:
        placed = await _standing_of(view, user_id, score, participants)
        if placed is None:
            return None
        rank, visible_position, percentile = placed
        neighbours = []
        if around > 0:
            start = max(0, visible_position - around)
            neighbours = await _visible_range(view, start, visible_position - start + around + 1)
    else:
        position = replies[4]
        if position is None:
            return None
        visible_position = position - view.hidden_before(position)
        start = max(0, visible_position - around)
        limit = visible_position - start + around + 1
        commands = [("ZCOUNT", view.key, f"({score!r}", "+inf"), ("ZCOUNT", view.key, repr(score), repr(score))]
        if around > 0:
            raw_start = _raw_start(view, start)
            commands.append(view.range_command(raw_start, raw_start + limit - 1 + len(view.hidden)))
        counted = await raw_commands.read(client, commands)
        rank = counted[0] - view.hidden_above(score) + 1
        percentile = percentile_rank(participants, rank, counted[1] - view.hidden_equal(score))
        neighbours = await _standings_of_rows(view, start, limit, view.parse_range(counted[2])) if around > 0 else []
    return UserStanding(
        rank=rank,
        user_id=user_id,
        score=board.display_score(score),
        display_name=display_name.decode() if display_name is not None else None,
        participants=participants,
        neighbours=[standing for standing in neighbours if standing.user_id != user_id],
        percentile=percentile,
    )


class UserRank(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's rank in a many-athletes query; rank and score are None when unranked."""

    user_id: str
    rank: int | None
    score: float | int | None


async def read_ranks(
    client: redis.Redis, names: Names, board: Board, period: str, user_ids: list[str], *, group: str | None = None
) -> list[UserRank]:
    """Return the rank and score of each of ``user_ids``, in the order given."""
    view = await _open(client, names, board, period, group)
    hidden_users = {member.decode() for member in await client.smembers(names.hidden_users)}
    scores = await client.zmscore(view.key, user_ids) if user_ids else []
    participants = await client.zcard(view.key) - len(view.hidden)
    ranks: list[UserRank] = []
    for user_id, score in zip(user_ids, scores, strict=True):
        placed = None
        if score is not None and user_id not in hidden_users:
            placed = await _standing_of(view, user_id, score, participants)
        if placed is None:
            ranks.append(UserRank(user_id=user_id, rank=None, score=None))
        else:
            ranks.append(UserRank(user_id=user_id, rank=placed[0], score=board.display_score(score)))
    return ranks
