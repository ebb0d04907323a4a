"""The clock every service reads "now" from, so tests can place now anywhere.

A clock is any zero-argument callable that returns an aware UTC datetime. Services
take one clock object and pass it to everything that needs the time of day:
period resolution, late-event checks, period closing. Redelivery bookkeeping
(how long applied event ids are kept) stays on the system clock, because it is
about real elapsed time, not about the domain's calendar.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> datetime: ...


def system_clock() -> datetime:
    """Return the current UTC time."""
    return datetime.now(timezone.utc)


class ManualClock:
    """A clock that keeps one instant until a test sets or advances it."""

    def __init__(self, now: datetime) -> None:
        self.set(now)

    def __call__(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        """Move the clock to ``now``; raise ValueError for a naive datetime."""
        if now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime, such as datetime(2026, 1, 1, tzinfo=timezone.utc)")
        self._now = now.astimezone(timezone.utc)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
