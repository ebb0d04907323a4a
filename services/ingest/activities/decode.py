"""From uploaded bytes to metric values: detect the format, decode it, derive the metrics. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.activities.derive import measurements
from services.ingest.activities.detect import detect_format
from services.ingest.activities.fit import decode_fit
from services.ingest.activities.gpx import decode_gpx
from services.ingest.activities.model import Activity, ActivityFormat, Measurement
from services.ingest.activities.tcx import decode_tcx


@dataclass(frozen=True, slots=True)
class DecodedUpload:
    """The format, session count and metric values of one activity file."""

    format: ActivityFormat
    session_count: int
    measurements: tuple[Measurement, ...]


def decode_activity(body: bytes, declared: ActivityFormat | None) -> Activity:
    """Decode an activity file of any supported format; raise ActivityFileError for a bad one."""
    found, root = detect_format(body, declared)
    if found is ActivityFormat.FIT:
        return decode_fit(body)
    if found is ActivityFormat.GPX:
        return decode_gpx(body)
    assert root is not None
    return decode_tcx(root)


def decode_upload(body: bytes, declared: ActivityFormat | None) -> DecodedUpload:
    """Decode an activity file and derive its metric values; raise ActivityFileError for a bad file."""
    activity = decode_activity(body, declared)
    return DecodedUpload(format=activity.format, session_count=len(activity.sessions), measurements=tuple(measurements(activity)))
