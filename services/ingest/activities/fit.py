"""Decoding FIT activity files with Garmin's FIT SDK (``garmin-fit-sdk``). No I/O here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from garmin_fit_sdk import CrcCalculator, Decoder, Stream

from services.ingest.activities.model import Activity, ActivityFileError, ActivityFormat, Sample, Session

_CRC_SIZE = 2
# The SDK reports errors as "FIT Runtime Error at byte: <offset> <message>".
_SDK_ERROR = re.compile(r"at byte: (?P<offset>\d+) (?P<message>.*?)\.?$")


def _truncated(detail: str) -> ActivityFileError:
    return ActivityFileError("activity-truncated", "Activity file truncated", f"{detail}; upload the complete file")


def _corrupt(detail: str) -> ActivityFileError:
    return ActivityFileError("activity-corrupt", "Activity file corrupt", f"{detail}; upload the original file from the device")


def check_header(body: bytes) -> None:
    """Raise ActivityFileError when the first header declares more data than the body contains, or fails its CRC."""
    header_size = body[0]
    data_size = int.from_bytes(body[4:8], "little")
    declared_bytes = header_size + data_size + _CRC_SIZE
    if declared_bytes > len(body):
        raise _truncated(f"the FIT file is truncated: its header declares {declared_bytes} bytes but the upload has {len(body)}")
    if header_size == 14:
        header_crc = int.from_bytes(body[12:14], "little")
        # A header CRC of 0 means the writer did not compute one, which the FIT protocol allows.
        if header_crc != 0 and header_crc != CrcCalculator.calculate_crc(body, 0, 12):
            raise _corrupt("the FIT file header fails its CRC check")


def _sdk_error(error: Exception) -> ActivityFileError:
    message = str(error)
    if isinstance(error, IndexError):
        return _truncated("the FIT file ends in the middle of a message")
    if message.endswith("CRC Error"):
        return _corrupt("the FIT file fails its CRC check")
    found = _SDK_ERROR.search(message)
    if found is not None:
        return _corrupt(f"the FIT file is corrupt at byte {found['offset']}: {found['message'].lower()}")
    return _corrupt(f"the FIT file is corrupt: {message}")


def _number(message: Mapping[Any, Any], field: str) -> float | None:
    value = message.get(field)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sport_name(session: Mapping[Any, Any]) -> str:
    sport = session.get("sport")
    if isinstance(sport, str):
        return sport
    # The SDK leaves sport numbers newer than its profile as integers.
    return "generic" if sport is None else f"sport_{sport}"


def _session_end(session: Mapping[Any, Any], start: datetime, elapsed_time_s: float | None) -> datetime:
    end = session.get("timestamp")
    by_elapsed = start + timedelta(seconds=elapsed_time_s or 0)
    return max(end, by_elapsed) if isinstance(end, datetime) else by_elapsed


def _samples(records: Sequence[Mapping[Any, Any]], start: datetime, end: datetime) -> tuple[Sample, ...]:
    samples = []
    for record in records:
        timestamp = record.get("timestamp")
        if not isinstance(timestamp, datetime) or not start <= timestamp <= end:
            continue
        samples.append(Sample(time_s=timestamp.timestamp(), distance_m=_number(record, "distance"), power_w=_number(record, "power")))
    samples.sort(key=lambda sample: sample.time_s)
    return tuple(samples)


def _session(index: int, message: Mapping[Any, Any], records: Sequence[Mapping[Any, Any]]) -> Session:
    start = message.get("start_time")
    if not isinstance(start, datetime):
        raise ActivityFileError(
            "no-session", "Activity has no session", f"session {index} of the FIT file has no start_time, so it cannot be dated"
        )
    elapsed_time_s = _number(message, "total_elapsed_time")
    moving_time_s = _number(message, "total_moving_time")
    return Session(
        sport=_sport_name(message),
        start_time=start,
        elapsed_time_s=elapsed_time_s,
        moving_time_s=moving_time_s if moving_time_s is not None else _number(message, "total_timer_time"),
        distance_m=_number(message, "total_distance"),
        ascent_m=_number(message, "total_ascent"),
        calories_kcal=_number(message, "total_calories"),
        samples=_samples(records, start, _session_end(message, start, elapsed_time_s)),
    )


def decode_fit(body: bytes) -> Activity:
    """Decode a FIT activity file, checking its CRCs; raise ActivityFileError for anything else.

    The whole file is decoded before any session is returned, so a file that is
    corrupt anywhere yields no session at all.
    """
    check_header(body)
    messages, errors = Decoder(Stream.from_byte_array(bytearray(body))).read()
    if errors:
        raise _sdk_error(errors[0])

    file_ids = messages.get("file_id_mesgs", [])
    file_type = file_ids[0].get("type") if file_ids else None
    if file_type != "activity":
        found = "has no file_id message, so it is" if file_type is None else f"is a {file_type} file,"
        raise ActivityFileError(
            "not-an-activity", "Not an activity", f"the FIT file {found} not an activity; upload an activity recording"
        )

    sessions = messages.get("session_mesgs", [])
    if not sessions:
        raise ActivityFileError(
            "no-session", "Activity has no session",
            "the FIT activity has no session message; the recording was not finished on the device, so finish or save it and upload again",
        )
    records = messages.get("record_mesgs", [])
    return Activity(format=ActivityFormat.FIT, sessions=tuple(_session(index, message, records) for index, message in enumerate(sessions)))
