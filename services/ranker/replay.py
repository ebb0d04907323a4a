"""Fold persisted events into the final state of each ranking period, as the apply script leaves it.

The rebuild reads the events from PostgreSQL grouped by athlete and writes each
athlete's final state once, instead of sending every event through the apply
script. The state ``apply.lua`` leaves does not depend on the order in which it
applied an athlete's events, so it can be computed per athlete:

- ``sum`` and ``count``: the sum of the sorted-set scores; reached is the
  latest ``occurred_at``.
- ``best``: the highest sorted-set score; reached is the earliest
  ``occurred_at`` among the events with that score.
- ``latest``: the score of the event with the greatest ``occurred:event_id``
  text in byte order; reached is its ``occurred_at``.

Reached, and with it the order member, is stored only on boards with tie policy
``first``, and ``latest_at`` only on ``latest`` boards. Hidden athletes keep
their scores like everyone else, because hiding changes ranks, not the stored
state. Sums are exact integers here, while ``ZINCRBY`` adds doubles, so the two
agree while every partial sum stays within 2^53 (the limit ``sort_score``
enforces for one value).

This module does no I/O: the caller feeds rows in athlete order and writes what
:meth:`ReplayFold.take` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import structlog

from services.ranker.script import OCCURRED_OFFSET_MS
from shared.boards import Board, BoardError, Operator, Reset, Scope, Tie, ranking_id
from shared.periods import ALL_TIME, closes_at, period_bounds, period_of

log = structlog.get_logger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# 2^53: the order set's score key counts down from it (see apply.lua).
_ORDER_SCORE_TOP = 2**53
# Bounds of the one period of boards that never reset, beyond any instant.
_NEVER_START_US, _NEVER_END_US = -(2**63), 2**63
_HOUR_US = 3600 * 1_000_000


def epoch_us(instant: datetime) -> int:
    """Return whole microseconds since the epoch, computed without float rounding."""
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def occurred_text(occurred_ms: int) -> str:
    """Return ``occurred_at`` as the apply script stores it: 16 digits of ms since the epoch plus 10^14."""
    return f"{occurred_ms + OCCURRED_OFFSET_MS:016d}"


def order_member(score: int, reached: str, user_id: str) -> str:
    """Return the member of the order set (tie policy ``first``), byte for byte as ``apply.lua`` builds it."""
    score_key = f"1{_ORDER_SCORE_TOP - score:016d}" if score >= 0 else f"2{-score:016d}"
    return f"{score_key}:{reached}:{user_id}"


class PeriodFinder:
    """Find the period of an instant and when it closes, reusing periods found before.

    Like :class:`shared.periods.PeriodLookup`, but instants are integer
    microseconds since the epoch, which the replay reads from PostgreSQL
    without building a datetime per event. Periods are kept per hour of the
    instant, because the replay reads each athlete's events in stream order,
    mostly oldest first, so the next athlete's first event and every late event
    jump back in time. The result always
    equals :func:`period_of` and :func:`closes_at`: a kept period is reused
    only for instants inside its bounds, so an hour that two periods share
    (zones whose midnight is not on a UTC hour, cron times) only costs more
    lookups. Nothing is evicted: one entry per board and hour with events.
    """

    def __init__(self) -> None:
        # (board id, hour since the epoch) -> (start µs, end µs, period id, closing µs or None)
        self._periods: dict[tuple[str, int], tuple[int, int, str, int | None]] = {}
        self._last: dict[str, tuple[int, int, str, int | None]] = {}

    def find(self, board: Board, instant_us: int) -> tuple[str, int | None]:
        last = self._last.get(board.id)
        if last is not None and last[0] <= instant_us < last[1]:
            return last[2], last[3]
        key = (board.id, instant_us // _HOUR_US)
        found = self._periods.get(key)
        if found is None or not found[0] <= instant_us < found[1]:
            found = self._periods[key] = _period_containing(board, instant_us)
        self._last[board.id] = found
        return found[2], found[3]


def _period_containing(board: Board, instant_us: int) -> tuple[int, int, str, int | None]:
    """Return (start µs, end µs, period id, closing µs or None) of the period of ``board`` that contains the instant."""
    if board.reset is Reset.NEVER:
        return _NEVER_START_US, _NEVER_END_US, ALL_TIME, None
    period = period_of(board, _EPOCH + timedelta(microseconds=instant_us))
    start, end = period_bounds(board, period)
    closing = closes_at(board, period)
    closing_us = None if closing is None else epoch_us(closing)
    if start is None or end is None or not epoch_us(start) <= instant_us < epoch_us(end):
        # Bounds that do not contain the instant are never reused: an empty range matches nothing.
        return instant_us, instant_us, period, closing_us
    return epoch_us(start), epoch_us(end), period, closing_us


@dataclass(slots=True)
class AthleteState:
    """One athlete's score and times in one ranking period while their events are folded."""

    score: int
    reached_ms: int
    latest_ms: int
    latest_event_id: str


@dataclass
class RankingPeriod:
    """One ranking period the rebuild fills."""

    board: Board
    group: str | None
    period: str

    @property
    def ranking(self) -> str:
        return ranking_id(self.board.id, self.group)


@dataclass
class PeriodWrites:
    """Writes to one ranking period's aside keys; ``first`` is set on the first writes to it in a run."""

    target: RankingPeriod
    first: bool
    scores: dict[str, int] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    latest_at: dict[str, str] = field(default_factory=dict)
    reached: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


@dataclass
class ReplayWrites:
    """The writes of the athletes completed since the last :meth:`ReplayFold.take`."""

    periods: list[PeriodWrites]
    display_names: dict[str, str]


class ReplayFold:
    """Fold event rows, given in athlete order, into final per-athlete writes.

    ``period`` keeps only that period id; ``skipped`` contains (board id, group or
    "", period) triples that are left alone. Events are checked as the live
    ranker checks them: a value a board cannot rank is logged and skipped, and
    an event received after its period closed does not count on that board.
    """

    def __init__(self, boards: Iterable[Board], *, period: str | None = None, skipped: frozenset[tuple[str, str, str]] = frozenset()) -> None:
        self._by_metric: dict[str, list[Board]] = {}
        for board in boards:
            self._by_metric.setdefault(board.metric, []).append(board)
        self._period = period
        self._skipped = skipped
        self._periods = PeriodFinder()
        # Every ranking period that received an event, in the order first seen.
        self.built: dict[tuple[str, str], RankingPeriod] = {}
        self.late_events = 0
        self.rejected_values = 0
        self.buffered = 0
        self._pending: dict[tuple[str, str], PeriodWrites] = {}
        self._display_names: dict[str, str] = {}
        self._user: str | None = None
        self._user_display_name: str | None = None
        self._states: dict[tuple[str, str], AthleteState] = {}

    def add(
        self, event_id: str, user_id: str, metric: str, value: float, occurred_us: int, received_us: int,
        display_name: str | None, groups: list[str],
    ) -> None:
        """Fold one event; rows of one athlete must come one after the other."""
        if user_id != self._user:
            self._complete_user()
            self._user = user_id
        if display_name is not None:
            self._user_display_name = display_name
        occurred_ms = occurred_us // 1000
        for board in self._by_metric.get(metric, ()):
            try:
                score = board.sort_score(value)
            except BoardError as error:
                self.rejected_values += 1
                log.error("event skipped on board", board=board.id, event_id=event_id, error=str(error))
                continue
            period, closing_us = self._periods.find(board, occurred_us)
            if closing_us is not None and received_us > closing_us:
                self.late_events += 1
                continue
            if self._period is not None and period != self._period:
                continue
            rankings = (None,) if board.scope is Scope.GLOBAL else dict.fromkeys(groups)
            for group in rankings:
                if self._skipped and (board.id, group or "", period) in self._skipped:
                    continue
                key = (ranking_id(board.id, group), period)
                self._writes(key, board, group, period).applied.append(event_id)
                self.buffered += 1
                state = self._states.get(key)
                if state is None:
                    self._states[key] = AthleteState(score, occurred_ms, occurred_ms, event_id)
                else:
                    _fold(board.operator, state, score, occurred_ms, event_id)

    def take(self) -> ReplayWrites:
        """Return the writes buffered so far; the athlete being folded stays until the next one starts."""
        writes = ReplayWrites(list(self._pending.values()), self._display_names)
        self._pending = {}
        self._display_names = {}
        self.buffered = 0
        return writes

    def finish(self) -> ReplayWrites:
        """Complete the last athlete and return every write not taken yet."""
        self._complete_user()
        self._user = None
        return self.take()

    def _writes(self, key: tuple[str, str], board: Board, group: str | None, period: str) -> PeriodWrites:
        writes = self._pending.get(key)
        if writes is None:
            first = key not in self.built
            if first:
                self.built[key] = RankingPeriod(board, group, period)
            writes = self._pending[key] = PeriodWrites(self.built[key], first)
        return writes

    def _complete_user(self) -> None:
        user = self._user
        if user is None:
            return
        if self._user_display_name is not None:
            self._display_names[user] = self._user_display_name
            self._user_display_name = None
        for key, state in self._states.items():
            target = self.built[key]
            board = target.board
            writes = self._writes(key, board, target.group, target.period)
            writes.scores[user] = state.score
            self.buffered += 1
            if board.operator is Operator.LATEST:
                writes.latest_at[user] = f"{occurred_text(state.latest_ms)}:{state.latest_event_id}"
            if board.tie is Tie.FIRST:
                reached = occurred_text(state.reached_ms)
                writes.reached[user] = reached
                writes.order.append(order_member(state.score, reached, user))
        self._states = {}


def _fold(operator: Operator, state: AthleteState, score: int, occurred_ms: int, event_id: str) -> None:
    """Fold one more event into ``state``, as one more event through ``apply.lua`` would change it."""
    if operator is Operator.SUM or operator is Operator.COUNT:
        state.score += score
        if occurred_ms > state.reached_ms:
            state.reached_ms = occurred_ms
    elif operator is Operator.BEST:
        if score > state.score:
            state.score = score
            state.reached_ms = occurred_ms
        elif score == state.score and occurred_ms < state.reached_ms:
            state.reached_ms = occurred_ms
    # Latest: "occurred:event_id" compared byte-wise. occurred is fixed-width, and
    # the code point order of str equals the byte order of its UTF-8, so a tuple compares the same.
    elif (occurred_ms, event_id) >= (state.latest_ms, state.latest_event_id):
        state.latest_ms = occurred_ms
        state.latest_event_id = event_id
        state.score = score
        state.reached_ms = occurred_ms
