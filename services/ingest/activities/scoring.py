"""Score events from an activity's metric values, with deterministic event ids. No I/O here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from services.ingest.activities.model import Measurement
from shared.schema import ScoreEvent

EVENT_ID_PREFIX = "act-"


def file_digest(body: bytes) -> str:
    """Return the SHA-256 of an uploaded file in hex."""
    return hashlib.sha256(body).hexdigest()


def activity_event_id(digest: str, user_id: str, measurement: Measurement) -> str:
    """Return the event id of one metric of one session of a file uploaded for ``user_id``.

    The same file, athlete, session and metric always give the same id, so an
    upload repeated later is reported as duplicate. The athlete is part of the
    hash because two athletes may upload the same file, such as a shared ride.
    """
    key = f"{digest}\n{user_id}\n{measurement.session_index}\n{measurement.metric}".encode()
    return EVENT_ID_PREFIX + hashlib.blake2b(key, digest_size=16).hexdigest()


def score_events(measurements: Iterable[Measurement], digest: str, user_id: str) -> list[ScoreEvent]:
    """Return one score event per measurement, in order."""
    return [
        ScoreEvent(
            event_id=activity_event_id(digest, user_id, measurement),
            user_id=user_id,
            metric=measurement.metric,
            value=measurement.value,
            occurred_at=measurement.occurred_at,
        )
        for measurement in measurements
    ]
