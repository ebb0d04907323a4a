"""Reject events by time: too far in the future, or too late for every board they feed; name the boards that leave one out. No I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from services.ingest.decode import Item, Rejection
from shared.boards import Board, BoardRegistry
from shared.periods import PeriodLookup, format_instant
from shared.schema import FieldError, ScoreEvent

MAX_FUTURE_S = 5 * 60


def timing_error(event: ScoreEvent, boards: BoardRegistry, now: datetime, periods: PeriodLookup | None = None) -> FieldError | None:
    """Return why ``event`` cannot count at ``now``, or None.

    An event counts on a board until its period's end plus the board's late
    grace. It is rejected only when it is too late for every board of its
    metric. A board whose period has closed leaves it out, because the ranker
    checks the same rule with the event's ``received_at``. Pass a
    ``periods`` lookup that is kept between calls, so each event finds its
    period by comparison with the last one found.
    """
    if event.occurred_at - now > timedelta(seconds=MAX_FUTURE_S):
        return FieldError("occurred_at", f"is more than {MAX_FUTURE_S // 60} minutes in the future; send events when the workout has happened")
    boards_of_metric = boards.for_metric(event.metric)
    if not boards_of_metric:
        return None
    periods = periods if periods is not None else PeriodLookup()
    for board in boards_of_metric:
        _period, closing = periods.find(board, event.occurred_at)
        if closing is None or now <= closing:
            return None
    board = boards_of_metric[0]
    period, closing = periods.find(board, event.occurred_at)
    assert closing is not None
    return FieldError("occurred_at", period_closed_reason(board, period, closing))


def period_closed_reason(board: Board, period: str, closing: datetime) -> str:
    """Return why ``period`` of ``board`` takes no more events: it closed at ``closing``."""
    return f"period closed: period {period!r} of board {board.id!r} stopped taking late events at {format_instant(closing)}"


def check_timing(items: Sequence[Item], boards: BoardRegistry, now: datetime, periods: PeriodLookup | None = None) -> list[Item]:
    """Return ``items`` with every event that fails :func:`timing_error` replaced by its Rejection.

    Pass a ``periods`` lookup that lives as long as the process, so most events
    find their period without computing it.
    """
    checked: list[Item] = []
    periods = periods if periods is not None else PeriodLookup()
    for item in items:
        error = timing_error(item, boards, now, periods) if isinstance(item, ScoreEvent) else None
        checked.append(item if error is None else Rejection(item.event_id, error))
    return checked


def closed_boards(event: ScoreEvent, boards: BoardRegistry, now: datetime, periods: PeriodLookup) -> list[dict[str, str]]:
    """Return one entry per board of ``event``'s metric whose period of its date closed before ``now``.

    Such a board leaves the event out without a rejection, when another board
    of its metric still takes it, so the response names each one.
    """
    closed = []
    for board in boards.for_metric(event.metric):
        period, closing = periods.find(board, event.occurred_at)
        if closing is not None and now > closing:
            closed.append({"event_id": event.event_id, "board": board.id, "period": period, "reason": period_closed_reason(board, period, closing)})
    return closed
