"""From an activity's sessions to metric values; ``docs/activities.md`` lists every metric. No I/O here."""

from __future__ import annotations

import re

from services.ingest.activities.efforts import best_average_power_w, fastest_time_s
from services.ingest.activities.model import Activity, Measurement, Session

# Metric prefixes of the common sports; any other sport uses its own name.
SPORT_PREFIXES = {
    "running": "run",
    "run": "run",
    "cycling": "ride",
    "biking": "ride",
    "ride": "ride",
    "walking": "walk",
    "walk": "walk",
    "swimming": "swim",
    "swim": "swim",
}
# Prefix for a session whose sport is missing or cannot form a metric name.
UNKNOWN_SPORT_PREFIX = "activity"

# Fastest-time efforts per sport prefix: metric label and distance in metres.
DISTANCE_EFFORTS = {
    "run": (("1k", 1000.0), ("5k", 5000.0), ("10k", 10000.0), ("half_marathon", 21097.5), ("marathon", 42195.0)),
}
# Best-average-power efforts for every sport with power samples: metric label and seconds.
POWER_EFFORTS = (("5min", 300), ("20min", 1200), ("60min", 3600))

_NOT_NAME_CHARACTER = re.compile(r"[^a-z0-9]+")
# Leaves room under the 64-character metric limit for the longest suffix.
_MAX_PREFIX_LENGTH = 40


def sport_prefix(sport: str) -> str:
    """Return the metric prefix of a sport name: ``running`` -> ``run``, ``Cross Country Skiing`` -> ``cross_country_skiing``."""
    name = _NOT_NAME_CHARACTER.sub("_", sport.lower()).strip("_")
    if name in SPORT_PREFIXES:
        return SPORT_PREFIXES[name]
    if not name or not name[0].isalpha():
        return UNKNOWN_SPORT_PREFIX
    return name[:_MAX_PREFIX_LENGTH].rstrip("_")


def _summary_values(session: Session) -> list[tuple[str, float | int | None]]:
    return [
        ("distance_m", None if session.distance_m is None else round(session.distance_m, 2)),
        ("moving_time_s", None if session.moving_time_s is None else round(session.moving_time_s, 3)),
        ("elapsed_time_s", None if session.elapsed_time_s is None else round(session.elapsed_time_s, 3)),
        ("ascent_m", None if session.ascent_m is None else round(session.ascent_m, 1)),
        ("calories_kcal", None if session.calories_kcal is None else round(session.calories_kcal)),
    ]


def _effort_values(prefix: str, session: Session) -> list[tuple[str, float | int | None]]:
    values: list[tuple[str, float | int | None]] = []
    for label, distance_m in DISTANCE_EFFORTS.get(prefix, ()):
        time_s = fastest_time_s(session.samples, distance_m)
        values.append((f"{label}_time_s", None if time_s is None else round(time_s, 1)))
    for label, duration_s in POWER_EFFORTS:
        power_w = best_average_power_w(session.samples, duration_s)
        values.append((f"{label}_power_w", None if power_w is None else round(power_w)))
    return values


def session_measurements(index: int, session: Session) -> list[Measurement]:
    """Return the metric values of one session, leaving out those the file gives no value for."""
    prefix = sport_prefix(session.sport)
    return [
        Measurement(session_index=index, metric=f"{prefix}_{name}", value=value, occurred_at=session.start_time)
        for name, value in [*_summary_values(session), *_effort_values(prefix, session)]
        if value is not None
    ]


def measurements(activity: Activity) -> list[Measurement]:
    """Return the metric values of every session of ``activity``, session by session."""
    return [measurement for index, session in enumerate(activity.sessions) for measurement in session_measurements(index, session)]
