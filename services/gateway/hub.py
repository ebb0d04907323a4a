"""Subscriptions: which connection follows which view under which id. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BoardPeriod = tuple[str, str]


@dataclass(frozen=True)
class View:
    """The content of a subscription: a board period's top N and optionally one athlete with neighbours.

    Subscriptions with equal views share one read of Redis and one encoded body per push.
    ``group`` names a group board of ``board`` when set.
    """

    board: str
    period: str
    top: int
    user_id: str | None = None
    around: int = 0
    group: str | None = None

    @property
    def board_period(self) -> BoardPeriod:
        return (self.board_key, self.period)

    @property
    def board_key(self) -> str:
        """The board name used in rank-change messages: the board id, or ``board/group`` for a group board."""
        return self.board if self.group is None else f"{self.board}/{self.group}"


@dataclass(eq=False)
class Subscription:
    """One client subscription; ``seq`` is the board period's update number it has every change up to.

    ``ready`` turns True once the first snapshot went out, so no update overtakes it.
    """

    client: Any
    id: str
    view: View
    seq: int = 0
    ready: bool = False


@dataclass
class ViewState:
    """The state a view's last push showed, to tell whether the top N changed and who overtook whom."""

    top: list[tuple[str, int, Any]] = field(default_factory=list)
    score: float | int | None = None
    rank: int | None = None
    seq: int = 0


class Hub:
    """Maps views to subscriptions and collects the board periods that need a push."""

    def __init__(self) -> None:
        self.subscriptions_by_view: dict[View, set[Subscription]] = {}
        self.views_by_board_period: dict[BoardPeriod, set[View]] = {}
        self.view_states: dict[View, ViewState] = {}
        self.dirty: set[BoardPeriod] = set()

    def add(self, subscription: Subscription) -> None:
        view = subscription.view
        self.subscriptions_by_view.setdefault(view, set()).add(subscription)
        self.views_by_board_period.setdefault(view.board_period, set()).add(view)

    def remove(self, subscription: Subscription) -> None:
        view = subscription.view
        subscriptions = self.subscriptions_by_view.get(view)
        if subscriptions is None:
            return
        subscriptions.discard(subscription)
        if subscriptions:
            return
        del self.subscriptions_by_view[view]
        self.view_states.pop(view, None)
        views = self.views_by_board_period[view.board_period]
        views.discard(view)
        if not views:
            del self.views_by_board_period[view.board_period]
            self.dirty.discard(view.board_period)

    def is_followed(self, board_period: BoardPeriod) -> bool:
        return board_period in self.views_by_board_period

    def mark_dirty(self, board_period: BoardPeriod) -> None:
        """Schedule a push of a board period, if anyone follows it."""
        if board_period in self.views_by_board_period:
            self.dirty.add(board_period)

    def take_dirty(self) -> set[BoardPeriod]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def views_for(self, board_period: BoardPeriod) -> list[View]:
        return list(self.views_by_board_period.get(board_period, ()))

    def subscriptions_of(self, view: View) -> list[Subscription]:
        return list(self.subscriptions_by_view.get(view, ()))

    def board_periods(self) -> list[BoardPeriod]:
        return list(self.views_by_board_period)
