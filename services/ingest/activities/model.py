"""The decoded form of an activity file, the same for every format."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ActivityFormat(enum.Enum):
    """A supported activity file format."""

    FIT = "fit"
    GPX = "gpx"
    TCX = "tcx"


class ActivityFileError(ValueError):
    """The uploaded bytes are not a usable activity file; ``slug`` names the problem type."""

    def __init__(self, slug: str, title: str, detail: str) -> None:
        # All three go to Exception so the error survives pickling between processes.
        super().__init__(slug, title, detail)
        self.slug = slug
        self.title = title
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the record stream: seconds since the epoch, cumulative distance and power."""

    time_s: float
    distance_m: float | None = None
    power_w: float | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """One sport session of an activity with its summary values; None means the file has no value."""

    sport: str
    start_time: datetime
    elapsed_time_s: float | None
    moving_time_s: float | None
    distance_m: float | None
    ascent_m: float | None
    calories_kcal: float | None
    samples: tuple[Sample, ...] = ()


@dataclass(frozen=True, slots=True)
class Activity:
    """A decoded activity file: its format and at least one session."""

    format: ActivityFormat
    sessions: tuple[Session, ...]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One metric value derived from session ``session_index`` of an activity."""

    session_index: int
    metric: str
    value: float | int
    occurred_at: datetime
