"""Reading what views show from Redis: one top-N read per board period, one read per followed athlete."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis

from services.gateway.hub import View
from services.gateway.overtakes import MAX_NAMED, passed_range
from shared.boards import Board, ranking_id
from shared.names import Names
from shared.standings import Standing, UserStanding, read_top, read_user


@dataclass
class Rendered:
    """The state of one view: its top entries and the followed athlete's standing."""

    entries: list[Standing]
    standing: UserStanding | None


def ranking_board(board: Board, group: str | None) -> Board:
    """Return ``board`` renamed to the ranking that contains a group's scores, for the standings reads.

    NOTE: the standings reads take a Board and use its id as the ranking name, so a
    group ranking is read through a copy whose id is ``board/group``.
    """
    if group is None:
        return board
    return msgspec.structs.replace(board, id=ranking_id(board.id, group))


class Renderer:
    """Reads the state of views; every call is a few Redis round trips, none per subscriber."""

    def __init__(self, client: redis.Redis, names: Names) -> None:
        self.client = client
        self.names = names

    async def read(self, board: Board, views: Iterable[View]) -> dict[View, Rendered]:
        """Read every view of one board period, sharing one top-N read between them.

        All ``views`` must be of the same board period.
        """
        views = list(views)
        if not views:
            return {}
        first = views[0]
        ranking = ranking_board(board, first.group)
        longest = max(view.top for view in views)
        top = await read_top(self.client, self.names, ranking, first.period, longest) if longest else []
        rendered: dict[View, Rendered] = {}
        standings: dict[tuple[str, int], UserStanding | None] = {}
        for view in views:
            standing = None
            if view.user_id is not None:
                key = (view.user_id, view.around)
                if key not in standings:
                    standings[key] = await read_user(self.client, self.names, ranking, view.period, view.user_id, view.around)
                standing = standings[key]
            rendered[view] = Rendered(entries=top[: view.top], standing=standing)
        return rendered

    async def read_passed(self, board: Board, view: View, old_score: float | int, new_score: float | int) -> list[str]:
        """Return the athletes whose score lies between the followed athlete's old and new score (at most 2 x MAX_NAMED)."""
        bounds = passed_range(board, old_score, new_score)
        if bounds is None:
            return []
        ranking = ranking_board(board, view.group)
        low, high = bounds
        members = await self.client.zrangebyscore(self.names.board_scores(ranking.id, view.period), low, high, start=0, num=2 * MAX_NAMED)
        return [member.decode() for member in members]
