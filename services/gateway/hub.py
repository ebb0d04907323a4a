"""Subscriptions and fan-out: who follows which view, and what changed since the last push."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.schema import BoardUpdate, RankChange

Connection = TypeVar("Connection")


@dataclass(frozen=True)
class View:
    """What a subscription shows: a board period's top N and optionally one athlete with neighbours.

    Clients with equal views share one rendered message, encoded once.
    """

    board: str
    period: str
    top: int
    user_id: str | None = None
    around: int = 0


@dataclass
class PendingChanges:
    """Changes to one board period not yet pushed: the latest change per athlete and the last seq."""

    seq: int = 0
    by_user: dict[str, RankChange] = field(default_factory=dict)

    def add(self, update: BoardUpdate) -> None:
        self.seq = max(self.seq, update.seq)
        for change in update.changes:
            previous = self.by_user.get(change.user_id)
            if previous is not None:
                # Keep the first old rank and score, so the pushed change spans the whole interval.
                change = RankChange(
                    user_id=change.user_id, score=change.score, rank=change.rank,
                    old_score=previous.old_score, old_rank=previous.old_rank,
                )
            self.by_user[change.user_id] = change

    def add_all(self, other: PendingChanges) -> None:
        """Merge changes taken earlier back in, keeping newer ones."""
        self.seq = max(self.seq, other.seq)
        for user_id, change in other.by_user.items():
            self.by_user.setdefault(user_id, change)


class Hub(Generic[Connection]):
    """Maps views to connections and collects board updates until the next flush."""

    def __init__(self) -> None:
        self.connections_by_view: dict[View, set[Connection]] = {}
        self.views_by_board_period: dict[tuple[str, str], set[View]] = {}
        self.views_by_connection: dict[Connection, set[View]] = {}
        self.pending: dict[tuple[str, str], PendingChanges] = {}

    def subscribe(self, connection: Connection, view: View) -> None:
        self.connections_by_view.setdefault(view, set()).add(connection)
        self.views_by_board_period.setdefault((view.board, view.period), set()).add(view)
        self.views_by_connection.setdefault(connection, set()).add(view)

    def unsubscribe(self, connection: Connection, view: View) -> None:
        connections = self.connections_by_view.get(view)
        if connections is None:
            return
        connections.discard(connection)
        self.views_by_connection.get(connection, set()).discard(view)
        if not connections:
            del self.connections_by_view[view]
            board_period = (view.board, view.period)
            views = self.views_by_board_period[board_period]
            views.discard(view)
            if not views:
                del self.views_by_board_period[board_period]
                self.pending.pop(board_period, None)

    def unsubscribe_board(self, connection: Connection, board: str) -> int:
        """Drop every view of ``board`` for ``connection``; return how many were dropped."""
        views = [view for view in self.views_by_connection.get(connection, set()) if view.board == board]
        for view in views:
            self.unsubscribe(connection, view)
        return len(views)

    def drop(self, connection: Connection) -> None:
        for view in list(self.views_by_connection.pop(connection, set())):
            self.views_by_connection[connection] = set()
            self.unsubscribe(connection, view)
        self.views_by_connection.pop(connection, None)

    def views_of(self, connection: Connection) -> set[View]:
        return self.views_by_connection.get(connection, set())

    def on_update(self, update: BoardUpdate) -> None:
        """Record an update if anyone follows its board period."""
        board_period = (update.board, update.period)
        if board_period in self.views_by_board_period:
            self.pending.setdefault(board_period, PendingChanges()).add(update)

    def mark_all_stale(self) -> None:
        """Force a push of every view, after pub/sub messages may have been lost."""
        for board_period in self.views_by_board_period:
            self.pending.setdefault(board_period, PendingChanges())

    def take_pending(self) -> dict[tuple[str, str], PendingChanges]:
        pending, self.pending = self.pending, {}
        return pending

    def views_for(self, board_period: tuple[str, str]) -> Iterable[View]:
        return list(self.views_by_board_period.get(board_period, ()))
