"""Period ids of board resets, derived from an event's ``occurred_at``.

A period is cut in the board's time zone: ``2026-12-04`` (daily),
``2026-W49`` (ISO week, Monday start), ``2026-12`` (monthly) and ``all``
(boards that never reset). These are plain functions with no I/O, so the clock
is always passed in.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from shared.boards import Board, Reset

ALL_TIME = "all"


def period_of(board: Board, instant: datetime) -> str:
    """Return the id of the period of ``board`` that contains ``instant`` (an aware datetime)."""
    if board.reset is Reset.NEVER:
        return ALL_TIME
    local = instant.astimezone(board.zone).date()
    return _period_of_date(board.reset, local)


def _period_of_date(reset: Reset, local: date) -> str:
    if reset is Reset.DAILY:
        return local.isoformat()
    if reset is Reset.WEEKLY:
        iso = local.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if reset is Reset.MONTHLY:
        return f"{local.year}-{local.month:02d}"
    raise ValueError(f"unsupported reset {reset}")


def _first_local_day(reset: Reset, period: str) -> date:
    try:
        if reset is Reset.DAILY:
            return date.fromisoformat(period)
        if reset is Reset.WEEKLY:
            year, week = period.split("-W")
            return date.fromisocalendar(int(year), int(week), 1)
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


def period_bounds(board: Board, period: str) -> tuple[datetime | None, datetime | None]:
    """Return the UTC start and end of a period; both None for all-time boards.

    Raises ValueError when ``period`` is not an id of this board's reset kind.
    """
    if board.reset is Reset.NEVER:
        if period != ALL_TIME:
            raise ValueError(f"period {period!r} is invalid for a board that never resets; use 'all'")
        return None, None
    first = _first_local_day(board.reset, period)
    if _period_of_date(board.reset, first) != period:
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
