"""Decoding GPX tracks with ``gpxpy``. No I/O here.

GPX has no summary values, so distance, moving time and ascent are computed by
gpxpy from the track points, and calories are never known.
"""

from __future__ import annotations

import gpxpy
import gpxpy.gpx

from services.ingest.activities.model import Activity, ActivityFileError, ActivityFormat, Sample, Session
from services.ingest.activities.xmltime import as_utc


def _samples(track: gpxpy.gpx.GPXTrack) -> list[Sample]:
    samples = []
    distance_m = 0.0
    for segment in track.segments:
        previous = None
        for point in segment.points:
            if previous is not None:
                distance_m += point.distance_2d(previous) or 0.0
            previous = point
            if point.time is not None:
                samples.append(Sample(time_s=as_utc(point.time).timestamp(), distance_m=distance_m))
    samples.sort(key=lambda sample: sample.time_s)
    return samples


def _ascent_m(track: gpxpy.gpx.GPXTrack) -> float | None:
    if not any(point.elevation is not None for segment in track.segments for point in segment.points):
        return None
    return track.get_uphill_downhill().uphill


def _session(track: gpxpy.gpx.GPXTrack, samples: list[Sample]) -> Session:
    moving = track.get_moving_data()
    first_time = min(as_utc(point.time) for segment in track.segments for point in segment.points if point.time is not None)
    return Session(
        sport=track.type or "",
        start_time=first_time,
        elapsed_time_s=samples[-1].time_s - samples[0].time_s,
        moving_time_s=None if moving is None else moving.moving_time,
        distance_m=track.length_2d(),
        ascent_m=_ascent_m(track),
        calories_kcal=None,
        samples=tuple(samples),
    )


def decode_gpx(body: bytes) -> Activity:
    """Return one session per track with at least two timed points; raise ActivityFileError if there is none.

    Call it only on XML that passed ``detect.parse_xml``, which forbids DTDs, because
    gpxpy parses with the standard library or lxml and no entity guard of its own.
    """
    try:
        document = gpxpy.parse(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ActivityFileError("invalid-gpx", "Invalid GPX file", f"the GPX file is not UTF-8: {error}") from None
    except gpxpy.gpx.GPXException as error:
        raise ActivityFileError("invalid-gpx", "Invalid GPX file", f"the GPX file is invalid: {error}") from None
    sessions = []
    for track in document.tracks:
        samples = _samples(track)
        if len(samples) >= 2:
            sessions.append(_session(track, samples))
    if not sessions:
        raise ActivityFileError(
            "no-session", "Activity has no session",
            "the GPX file has no track with at least two timed points; routes and waypoints alone are not activities",
        )
    return Activity(format=ActivityFormat.GPX, sessions=tuple(sessions))
