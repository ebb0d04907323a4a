"""Decoding TCX (Garmin Training Center XML) activities from an already parsed root. No I/O here."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from services.ingest.activities.model import Activity, ActivityFileError, ActivityFormat, Sample, Session
from services.ingest.activities.xmltime import parse_number, parse_time

FORMAT_NAME = "TCX"


def _number(parent: ElementTree.Element, path: str) -> float | None:
    element = parent.find(path)
    if element is None:
        return None
    return parse_number(FORMAT_NAME, path.rpartition("}")[2], element.text)


def _total(laps: list[ElementTree.Element], path: str) -> float | None:
    values = [value for value in (_number(lap, path) for lap in laps) if value is not None]
    return sum(values) if values else None


def _trackpoints(activity: ElementTree.Element) -> list[tuple[Sample, float | None]]:
    points = []
    for trackpoint in activity.iterfind("{*}Lap/{*}Track/{*}Trackpoint"):
        time = trackpoint.find("{*}Time")
        if time is None:
            continue
        sample = Sample(
            time_s=parse_time(FORMAT_NAME, "Time", time.text).timestamp(),
            distance_m=_number(trackpoint, "{*}DistanceMeters"),
            power_w=_number(trackpoint, "{*}Extensions/{*}TPX/{*}Watts"),
        )
        points.append((sample, _number(trackpoint, "{*}AltitudeMeters")))
    points.sort(key=lambda point: point[0].time_s)
    return points


def _ascent_m(altitudes: list[float]) -> float | None:
    """Sum the rises between consecutive altitudes; TCX has no ascent summary of its own."""
    if len(altitudes) < 2:
        return None
    return sum(max(after - before, 0.0) for before, after in zip(altitudes, altitudes[1:]))


def _session(activity: ElementTree.Element, laps: list[ElementTree.Element]) -> Session:
    start_time = parse_time(FORMAT_NAME, "Lap StartTime", laps[0].get("StartTime"))
    points = _trackpoints(activity)
    moving_time_s = _total(laps, "{*}TotalTimeSeconds")
    elapsed_time_s = points[-1][0].time_s - start_time.timestamp() if points else moving_time_s
    return Session(
        sport=activity.get("Sport") or "",
        start_time=start_time,
        elapsed_time_s=elapsed_time_s,
        moving_time_s=moving_time_s,
        distance_m=_total(laps, "{*}DistanceMeters"),
        ascent_m=_ascent_m([altitude for _sample, altitude in points if altitude is not None]),
        calories_kcal=_total(laps, "{*}Calories"),
        samples=tuple(sample for sample, _altitude in points),
    )


def decode_tcx(root: ElementTree.Element) -> Activity:
    """Return one session per <Activity> with at least one <Lap>; raise ActivityFileError if there is none."""
    activities = root.findall("{*}Activities/{*}Activity")
    if not activities and (root.find("{*}Courses") is not None or root.find("{*}Workouts") is not None):
        raise ActivityFileError(
            "not-an-activity", "Not an activity",
            "the TCX file holds courses or workouts, not an activity; upload a recorded activity",
        )
    sessions = []
    for activity in activities:
        laps = activity.findall("{*}Lap")
        if laps:
            sessions.append(_session(activity, laps))
    if not sessions:
        raise ActivityFileError(
            "no-session", "Activity has no session", "the TCX file has no <Activity> with a <Lap>; upload a recorded activity"
        )
    return Activity(format=ActivityFormat.TCX, sessions=tuple(sessions))
