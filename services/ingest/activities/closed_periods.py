"""Boards that leave a derived event out because its period closed. No I/O here.

An old recording is accepted when at least one board of its metric still
takes it, such as an all-time board. The boards whose period of that date
closed leave it out without a rejection, so the upload response lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from services.ingest.event_timing import period_closed_reason
from shared.boards import BoardRegistry
from shared.periods import accepts_late, closes_at, period_of
from shared.schema import EventResult, ScoreEvent

# Events with these outcomes are in the stream, so the ranker reads them.
_STORED_STATUSES = frozenset({"accepted", "duplicate"})


def closed_periods(
    events: Sequence[ScoreEvent], results: Sequence[EventResult], boards: BoardRegistry, now: datetime
) -> list[dict[str, str]]:
    """Return one entry per stored event and board whose period closed before ``now``, in event order."""
    entries = []
    for event, result in zip(events, results, strict=True):
        if result.status not in _STORED_STATUSES:
            continue
        for board in boards.for_metric(event.metric):
            if accepts_late(board, event.occurred_at, now):
                continue
            period = period_of(board, event.occurred_at)
            closing = closes_at(board, period)
            assert closing is not None, "a board that never resets accepts every event"
            entries.append({
                "event_id": event.event_id,
                "board": board.id,
                "period": period,
                "reason": period_closed_reason(board, period, closing),
            })
    return entries
