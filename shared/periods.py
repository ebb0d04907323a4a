"""Periods of board resets, derived from an event's ``occurred_at``.

A period is cut in the board's time zone, so a daily period lasts 23 or 25
hours on daylight-saving days. Period ids are readable: ``2026-12-04``
(daily), ``2026-W49`` (weekly), ``2026-12`` (monthly), ``all`` (boards that
never reset) and, for cron boards, the UTC start instant such as
``2026-12-07T05:00:00Z``.

Weeks are ISO 8601 weeks (Monday start, the week with the year's first Thursday
is week 1), so 2026-12-31 is in 2026-W53. A Sunday-start week runs Sunday to
Saturday and takes the id of the ISO week of the Monday after its Sunday.

These are plain functions with no I/O, so the clock is always passed in.
"""

from __future__ import annotations

import enum
import functools
from datetime import date, datetime, time, timedelta, timezone

from cronsim import CronSim

from shared.boards import Board, Reset, WeekStart

ALL_TIME = "all"


class PeriodStatus(enum.Enum):
    """``open`` until the period ends, ``provisional`` during its late grace, then ``final``."""

    OPEN = "open"
    PROVISIONAL = "provisional"
    FINAL = "final"


def format_instant(instant: datetime) -> str:
    """Return an RFC 3339 UTC instant with a ``Z`` suffix."""
    return instant.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _week_shift(board: Board) -> timedelta:
    # A Sunday-start week is the ISO week shifted one day earlier.
    return timedelta(days=1) if board.week_start is WeekStart.SUNDAY else timedelta(0)


def _period_of_date(board: Board, local: date) -> str:
    reset = board.reset
    if reset is Reset.DAILY:
        return local.isoformat()
    if reset is Reset.WEEKLY:
        iso = (local + _week_shift(board)).isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if reset is Reset.MONTHLY:
        return f"{local.year}-{local.month:02d}"
    raise ValueError(f"unsupported reset {reset}")


def _cron_start(board: Board, instant: datetime) -> datetime:
    """Return the last cron fire time at or before ``instant``."""
    assert board.cron is not None
    local = instant.astimezone(board.zone).replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(board.cron, local, reverse=True)).astimezone(timezone.utc)


def _cron_next(board: Board, start: datetime) -> datetime:
    assert board.cron is not None
    return next(CronSim(board.cron, start.astimezone(board.zone))).astimezone(timezone.utc)


def period_of(board: Board, instant: datetime) -> str:
    """Return the id of the period of ``board`` that contains ``instant`` (an aware datetime)."""
    if board.reset is Reset.NEVER:
        return ALL_TIME
    if board.reset is Reset.CRON:
        return format_instant(_cron_start(board, instant))
    local = instant.astimezone(board.zone).date()
    return _period_of_date(board, local)


def _first_local_day(board: Board, period: str) -> date:
    reset = board.reset
    try:
        if reset is Reset.DAILY:
            return date.fromisoformat(period)
        if reset is Reset.WEEKLY:
            year, week = period.split("-W")
            return date.fromisocalendar(int(year), int(week), 1) - _week_shift(board)
        if reset is Reset.MONTHLY:
            year, month = period.split("-")
            return date(int(year), int(month), 1)
    except ValueError:
        pass
    raise ValueError(f"period {period!r} is not a valid {reset.value} period id")


def _next_local_day(reset: Reset, first: date) -> date:
    if reset is Reset.DAILY:
        return first + timedelta(days=1)
    if reset is Reset.WEEKLY:
        return first + timedelta(days=7)
    if first.month == 12:
        return date(first.year + 1, 1, 1)
    return date(first.year, first.month + 1, 1)


def _cron_bounds(board: Board, period: str) -> tuple[datetime, datetime]:
    invalid = ValueError(f"period {period!r} is not a start instant of reset {board.cron!r}, such as {period_of(board, datetime(2026, 1, 1, tzinfo=timezone.utc))!r}")
    try:
        start = datetime.fromisoformat(period.replace("Z", "+00:00"))
    except ValueError:
        raise invalid from None
    if start.tzinfo is None or format_instant(start) != period or _cron_start(board, start) != start:
        raise invalid
    return start, _cron_next(board, start)


# Pure in (board, period) and called for every event by ingest's timing check and
# the ranker, so the bounds of recently used periods are kept (boards hash by value).
@functools.lru_cache(maxsize=4096)
def period_bounds(board: Board, period: str) -> tuple[datetime | None, datetime | None]:
    """Return the UTC start and end of a period; both None for all-time boards.

    Raises ValueError when ``period`` is not an id of this board's reset kind.
    """
    if board.reset is Reset.NEVER:
        if period != ALL_TIME:
            raise ValueError(f"period {period!r} is invalid for a board that never resets; use 'all'")
        return None, None
    if board.reset is Reset.CRON:
        return _cron_bounds(board, period)
    first = _first_local_day(board, period)
    if _period_of_date(board, first) != period:
        raise ValueError(f"period {period!r} is not a valid {board.reset.value} period id")
    following = _next_local_day(board.reset, first)
    zone = board.zone
    start = datetime.combine(first, time(0), zone).astimezone(timezone.utc)
    end = datetime.combine(following, time(0), zone).astimezone(timezone.utc)
    return start, end


def current_period(board: Board, now: datetime) -> str:
    return period_of(board, now)


def previous_period(board: Board, now: datetime) -> str:
    """Return the id of the period before the current one (``all`` for all-time boards)."""
    if board.reset is Reset.NEVER:
        return ALL_TIME
    start, _ = period_bounds(board, current_period(board, now))
    assert start is not None
    return period_of(board, start - timedelta(microseconds=1))


def resolve_period(board: Board, requested: str | None, now: datetime) -> str:
    """Resolve a query's ``period`` (None, ``current``, ``previous`` or an id); raise ValueError if invalid."""
    if requested in (None, "", "current"):
        return current_period(board, now)
    if requested == "previous":
        return previous_period(board, now)
    period_bounds(board, requested)
    return requested


def closes_at(board: Board, period: str) -> datetime | None:
    """Return the instant after which no event counts in ``period`` (its end plus the late grace); None if never."""
    _start, end = period_bounds(board, period)
    return None if end is None else end + timedelta(seconds=board.late_grace_s)


def period_status(board: Board, period: str, now: datetime) -> PeriodStatus:
    """Return whether ``period`` is open, provisional (in its late grace) or final at ``now``."""
    _start, end = period_bounds(board, period)
    if end is None or now < end:
        return PeriodStatus.OPEN
    if now < end + timedelta(seconds=board.late_grace_s):
        return PeriodStatus.PROVISIONAL
    return PeriodStatus.FINAL


def resets_at(board: Board, now: datetime) -> datetime | None:
    """Return when the current period ends; None for boards that never reset."""
    return period_bounds(board, current_period(board, now))[1]


def accepts_late(board: Board, occurred_at: datetime, received_at: datetime) -> bool:
    """Return whether an event that occurred at ``occurred_at`` still counts when received at ``received_at``.

    It counts until its period's end plus ``late_grace_s``, inclusive.
    """
    closing = closes_at(board, period_of(board, occurred_at))
    return closing is None or received_at <= closing


class PeriodLookup:
    """Find the period of each instant, reusing the last period found per board.

    Events mostly fall in the current period, so a lookup is usually two
    comparisons with the last period's bounds instead of a time zone
    conversion. Returns the same as :func:`period_of` and :func:`closes_at`.
    It keeps one period per board id, found with the board definition it
    was asked with, so one instance may serve a whole process across board
    reloads.
    """

    def __init__(self) -> None:
        # board id -> (board, start, end, period, closing) of the last period found.
        # Keyed by id because hashing a Board hashes every field.
        self._last: dict[str, tuple[Board, datetime | None, datetime | None, str, datetime | None]] = {}

    def find(self, board: Board, instant: datetime) -> tuple[str, datetime | None]:
        """Return the id of the period of ``board`` that contains ``instant``, and when it closes (None if never)."""
        last = self._last.get(board.id)
        # A reloaded or redefined board is a new object, whose periods may differ.
        if last is not None and last[0] is board:
            _board, start, end, period, closing = last
            if start is None or (start <= instant < end):  # type: ignore[operator]
                return period, closing

        period = period_of(board, instant)
        start, end = period_bounds(board, period)
        closing = None if end is None else end + timedelta(seconds=board.late_grace_s)
        # Cache only bounds that agree with period_of, so a reused period is always the one period_of returns.
        if start is None or (end is not None and start <= instant < end):
            self._last[board.id] = (board, start, end, period, closing)
        return period, closing
