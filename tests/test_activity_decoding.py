"""Activity files to metric values without a server: real FIT recordings, GPX, TCX and bad files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from garmin_fit_sdk import Encoder
from garmin_fit_sdk.profile import Profile

from services.ingest.activities.decode import decode_upload
from services.ingest.activities.derive import sport_prefix
from services.ingest.activities.efforts import best_average_power_w, fastest_time_s
from services.ingest.activities.model import ActivityFileError, ActivityFormat, Sample
from services.ingest.activities.worker import DecodeWorkerError, decode_in_process

DATA = Path(__file__).resolve().parent / "data"
MESG_NUM = Profile["mesg_num"]
ENCODED_START = datetime(2026, 11, 29, 8, 0, tzinfo=timezone.utc)

# Every value is the file's own session summary as the FIT SDK decodes it; the
# best efforts come from the record stream.
REAL_FILES = [
    ("activity-small-fenix2-run.fit", datetime(2015, 8, 15, 14, 45, 8, tzinfo=timezone.utc), {
        "run_distance_m": 9008.22, "run_moving_time_s": 2832.0, "run_elapsed_time_s": 2832.0,
        "run_ascent_m": 64.0, "run_calories_kcal": 516, "run_1k_time_s": 246.1, "run_5k_time_s": 1304.1,
    }),
    ("garmin-fenix-5-run.fit", datetime(2017, 6, 11, 14, 34, 9, tzinfo=timezone.utc), {
        "run_distance_m": 157.56, "run_moving_time_s": 56.887, "run_elapsed_time_s": 56.887,
        "run_ascent_m": 2.0, "run_calories_kcal": 5,
    }),
    ("garmin-fenix-5-walk.fit", datetime(2017, 6, 11, 14, 32, 51, tzinfo=timezone.utc), {
        "walk_distance_m": 67.85, "walk_moving_time_s": 45.379, "walk_elapsed_time_s": 45.379,
        "walk_ascent_m": 1.0, "walk_calories_kcal": 4,
    }),
    ("garmin-fenix-5-bike.fit", datetime(2017, 6, 12, 16, 9, 22, tzinfo=timezone.utc), {
        "ride_distance_m": 459.52, "ride_moving_time_s": 60.363, "ride_elapsed_time_s": 60.363,
        "ride_ascent_m": 0.0, "ride_calories_kcal": 7,
    }),
    ("garmin-edge-820-bike.fit", datetime(2017, 6, 12, 16, 10, 15, tzinfo=timezone.utc), {
        "ride_distance_m": 457.12, "ride_moving_time_s": 64.524, "ride_elapsed_time_s": 64.524,
        "ride_ascent_m": 0.0, "ride_calories_kcal": 8,
    }),
    ("sample-activity.fit", datetime(2011, 6, 26, 21, 18, 39, tzinfo=timezone.utc), {
        "ride_distance_m": 88797.21, "ride_moving_time_s": 10699.36, "ride_elapsed_time_s": 11741.57,
        "ride_ascent_m": 299.0, "ride_calories_kcal": 2045,
    }),
    ("Activity.fit", datetime(2012, 4, 9, 21, 22, 26, tzinfo=timezone.utc), {
        "run_distance_m": 5.73, "run_moving_time_s": 13.749, "run_elapsed_time_s": 13.749,
        "run_ascent_m": 0.0, "run_calories_kcal": 0,
    }),
]

BAD_FILES = [
    ("activity-unexpected-eof.fit", "activity-truncated",
     "the FIT file is truncated: its header declares 771 bytes but the upload has 768; upload the complete file"),
    # The Strava app's file is 19 bytes shorter than its header declares, and the
    # record at byte 7,451 appears to be one byte short, so the decoder loses its place at 7,472.
    ("strava-android-app-201.10-b1218918.fit", "activity-truncated",
     "the FIT file is truncated: its header declares 78252 bytes but the upload has 78233; upload the complete file"),
    ("activity-settings-corruptheader.fit", "activity-corrupt",
     "the FIT file is corrupt at byte 771: the file is not a fit file; upload the original file from the device"),
    ("MonitoringFile.fit", "not-an-activity",
     "the FIT file is a monitoring_b file, not an activity; upload an activity recording"),
    ("Settings.fit", "not-an-activity", "the FIT file is a settings file, not an activity; upload an activity recording"),
    ("WorkoutIndividualSteps.fit", "not-an-activity",
     "the FIT file is a workout file, not an activity; upload an activity recording"),
]


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize(("name", "start", "expected"), REAL_FILES, ids=[case[0] for case in REAL_FILES])
def test_real_fit_file_metrics(name: str, start: datetime, expected: dict) -> None:
    """Each real recording yields exactly its session summary and best efforts, dated at its start."""
    decoded = decode_upload(read(name), ActivityFormat.FIT)
    assert decoded.format is ActivityFormat.FIT
    assert decoded.session_count == 1
    assert {m.metric: m.value for m in decoded.measurements} == expected
    assert [m.occurred_at for m in decoded.measurements] == [start] * len(expected)
    assert {m.session_index for m in decoded.measurements} == {0}


@pytest.mark.parametrize(("name", "slug", "detail"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_fit_file_error(name: str, slug: str, detail: str) -> None:
    """Each corrupt or non-activity file raises its own problem type and detail."""
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(read(name), None)
    assert caught.value.slug == slug
    assert caught.value.detail == detail


def test_fit_crc_failure() -> None:
    """A flipped byte inside the data fails the file CRC."""
    body = bytearray(read("Activity.fit"))
    body[400] ^= 0xFF
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(bytes(body), None)
    assert caught.value.slug == "activity-corrupt"
    assert caught.value.detail == "the FIT file fails its CRC check; upload the original file from the device"


def test_fit_header_crc_failure() -> None:
    """A 14-byte header whose CRC does not match is rejected before decoding."""
    body = bytearray(read("garmin-fenix-5-run.fit"))
    assert body[0] == 14
    body[12] ^= 0xFF
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(bytes(body), None)
    assert caught.value.detail == "the FIT file header fails its CRC check; upload the original file from the device"


def test_gpx_track_metrics() -> None:
    """A GPX run due north gives the meridian distance, times, smoothed ascent and best efforts."""
    decoded = decode_upload(read("run-5k-north.gpx"), ActivityFormat.GPX)
    assert decoded.format is ActivityFormat.GPX
    assert {m.metric: m.value for m in decoded.measurements} == {
        # Five steps of 0.009 degrees of latitude; gpxpy takes a degree as 111,319.49 m.
        "run_distance_m": 5009.38,
        "run_moving_time_s": 1500.0,
        "run_elapsed_time_s": 1500.0,
        # gpxpy smooths elevations before summing rises; the raw rises add to 25 m.
        "run_ascent_m": 20.0,
        "run_1k_time_s": 299.4,
        "run_5k_time_s": 1497.2,
    }
    assert decoded.measurements[0].occurred_at == datetime(2026, 11, 28, 7, 0, tzinfo=timezone.utc)


def test_tcx_laps_and_power() -> None:
    """A two-lap TCX ride sums its laps and yields 5 and 20 minute power from the Watts extension."""
    decoded = decode_upload(read("ride-two-laps-power.tcx"), None)
    assert decoded.format is ActivityFormat.TCX
    assert {m.metric: m.value for m in decoded.measurements} == {
        "ride_distance_m": 10080.0,
        "ride_moving_time_s": 1250.0,
        "ride_elapsed_time_s": 1260.0,
        "ride_ascent_m": 50.0,
        "ride_calories_kcal": 310,
        # 300 s at 320 W is the best 5 minutes; with 900 s at 300 W it makes the best 20.
        "ride_5min_power_w": 320,
        "ride_20min_power_w": 305,
    }


XML_CASES = [
    ("entity expansion", b'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><gpx>&b;</gpx>',
     "forbidden-xml", "the XML declares a DTD or entities, which activity files never need; remove the <!DOCTYPE> declaration"),
    ("external entity", b'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY x SYSTEM "file:///etc/passwd">]><gpx>&x;</gpx>',
     "forbidden-xml", "the XML declares a DTD or entities, which activity files never need; remove the <!DOCTYPE> declaration"),
    ("not well-formed", b"<gpx><trk></gpx>", "invalid-xml", "the file is not well-formed XML: mismatched tag: line 1, column 12"),
    ("other root", b"<kml></kml>", "unknown-activity-format",
     "the XML root element is <kml>; a GPX file starts with <gpx> and a TCX file with <TrainingCenterDatabase>"),
    ("not xml or fit", b"hello", "unknown-activity-format",
     "the body is neither a FIT file (no '.FIT' header) nor GPX or TCX XML; upload a .fit, .gpx or .tcx file"),
    ("gpx without track", b'<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"><wpt lat="1" lon="2"/></gpx>',
     "no-session", "the GPX file has no track with at least two timed points; routes and waypoints alone are not activities"),
    ("tcx course", b'<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"><Courses/></TrainingCenterDatabase>',
     "not-an-activity", "the TCX file holds courses or workouts, not an activity; upload a recorded activity"),
    ("tcx without lap", b'<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"><Activities><Activity Sport="Running"/></Activities></TrainingCenterDatabase>',
     "no-session", "the TCX file has no <Activity> with a <Lap>; upload a recorded activity"),
    ("tcx bad number", b'<TrainingCenterDatabase><Activities><Activity Sport="Running"><Lap StartTime="2026-11-28T07:00:00Z"><DistanceMeters>far</DistanceMeters></Lap></Activity></Activities></TrainingCenterDatabase>',
     "invalid-tcx", "<DistanceMeters> holds 'far'; expected a number"),
]


@pytest.mark.parametrize(("case", "body", "slug", "detail"), XML_CASES, ids=[case[0] for case in XML_CASES])
def test_bad_xml_file_error(case: str, body: bytes, slug: str, detail: str) -> None:
    """Each bad GPX or TCX upload raises its own problem type and detail."""
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(body, None)
    assert caught.value.slug == slug
    assert caught.value.detail == detail


def test_declared_type_must_match() -> None:
    """A GPX body sent as a FIT file is rejected rather than guessed."""
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(read("run-5k-north.gpx"), ActivityFormat.FIT)
    assert caught.value.slug == "content-type-mismatch"
    assert caught.value.detail == (
        "the Content-Type names a FIT file but the body is a GPX file; send the matching Content-Type or application/octet-stream"
    )


@pytest.mark.parametrize(
    ("sport", "prefix"),
    [("running", "run"), ("Biking", "ride"), ("cycling", "ride"), ("walking", "walk"), ("swimming", "swim"),
     ("Cross Country Skiing", "cross_country_skiing"), ("9", "activity"), ("", "activity"), ("sport_254", "sport_254")],
)
def test_sport_prefix(sport: str, prefix: str) -> None:
    """Common sports get short prefixes; others keep their own name as a valid metric prefix."""
    assert sport_prefix(sport) == prefix


def test_fastest_time_interpolates_start() -> None:
    """The window start is interpolated between samples; a distance that drops is held."""
    samples = [Sample(0, 0.0), Sample(100, 400.0), Sample(200, 390.0), Sample(300, 1000.0), Sample(400, 1400.0)]
    # The drop to 390 m is held at 400 m, so the athlete stood still from t=100 to t=200
    # and the best 1,000 m runs from t=200 (400 m) to t=400 (1,400 m).
    assert fastest_time_s(samples, 1000) == 200.0
    # The best 500 m ends at t=300 (1,000 m) and starts at 500 m, a sixth of the way
    # from 400 m (t=200) to 1,000 m (t=300).
    assert fastest_time_s(samples, 500) == pytest.approx(100 - 100 / 6)
    assert fastest_time_s(samples, 1400) == 400.0
    assert fastest_time_s(samples, 1401) is None
    assert fastest_time_s([Sample(0), Sample(10)], 1) is None


def test_best_power_holds_and_gaps() -> None:
    """Power is kept until the next sample for at most 10 s, and a longer gap counts as zero."""
    steady = [Sample(t, power_w=200.0) for t in range(0, 300)]
    assert best_average_power_w(steady, 300) == 200.0
    assert best_average_power_w(steady, 301) is None
    # Two samples 60 s apart: 10 s of the first, then 50 s of zero, then 1 s of the last.
    gap = [Sample(0, power_w=300.0), Sample(60, power_w=300.0)]
    assert best_average_power_w(gap, 61) == pytest.approx(300.0 * 11 / 61)
    assert best_average_power_w([Sample(0), Sample(100)], 10) is None


def encode_fit(messages: list[dict]) -> bytes:
    """Encode ``messages`` (each with a ``mesg_num``) as a FIT file with Garmin's SDK encoder."""
    encoder = Encoder()
    for message in messages:
        encoder.write_mesg(message)
    return encoder.close()


def fit_file_id() -> dict:
    return {"mesg_num": MESG_NUM["FILE_ID"], "type": "activity", "manufacturer": "development", "product": 1, "serial_number": 1, "time_created": ENCODED_START}


def fit_records(first_s: int, stop_s: int, **fields_per_second) -> list[dict]:
    return [
        {"mesg_num": MESG_NUM["RECORD"], "timestamp": ENCODED_START + timedelta(seconds=second), **{name: rule(second) for name, rule in fields_per_second.items()}}
        for second in range(first_s, stop_s)
    ]


def test_fit_two_sessions() -> None:
    """A multisport FIT file yields each session's metrics, dated at its own start, from its own records."""
    body = encode_fit([
        fit_file_id(),
        *fit_records(0, 400, distance=lambda second: second * 3.0),
        {"mesg_num": MESG_NUM["SESSION"], "sport": "running", "start_time": ENCODED_START, "timestamp": ENCODED_START + timedelta(seconds=400),
         "total_elapsed_time": 400.0, "total_timer_time": 390.0, "total_distance": 1197.0, "total_ascent": 5, "total_calories": 30},
        *fit_records(600, 1001, power=lambda second: 250 if second < 900 else 100),
        {"mesg_num": MESG_NUM["SESSION"], "sport": "cycling", "start_time": ENCODED_START + timedelta(seconds=600),
         "timestamp": ENCODED_START + timedelta(seconds=1000), "total_elapsed_time": 400.0, "total_timer_time": 400.0, "total_distance": 5000.0},
    ])
    decoded = decode_upload(body, ActivityFormat.FIT)
    assert decoded.session_count == 2
    assert [(m.session_index, m.metric, m.value, m.occurred_at) for m in decoded.measurements] == [
        (0, "run_distance_m", 1197.0, ENCODED_START),
        (0, "run_moving_time_s", 390.0, ENCODED_START),
        (0, "run_elapsed_time_s", 400.0, ENCODED_START),
        (0, "run_ascent_m", 5.0, ENCODED_START),
        (0, "run_calories_kcal", 30, ENCODED_START),
        # 1,000 m at 3 m/s.
        (0, "run_1k_time_s", 333.3, ENCODED_START),
        (1, "ride_distance_m", 5000.0, ENCODED_START + timedelta(seconds=600)),
        (1, "ride_moving_time_s", 400.0, ENCODED_START + timedelta(seconds=600)),
        (1, "ride_elapsed_time_s", 400.0, ENCODED_START + timedelta(seconds=600)),
        (1, "ride_5min_power_w", 250, ENCODED_START + timedelta(seconds=600)),
    ]


def test_fit_activity_without_session() -> None:
    """A FIT activity whose recording was never saved has records but no session, and is rejected."""
    body = encode_fit([fit_file_id(), *fit_records(0, 10, distance=lambda second: second * 3.0)])
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(body, None)
    assert caught.value.slug == "no-session"
    assert caught.value.detail == (
        "the FIT activity has no session message; the recording was not finished on the device, so finish or save it and upload again"
    )


def test_fit_without_file_id() -> None:
    """A FIT file without a file_id message is rejected, because only file_id marks an activity."""
    body = encode_fit(fit_records(0, 10, distance=lambda second: second * 3.0))
    with pytest.raises(ActivityFileError) as caught:
        decode_upload(body, None)
    assert caught.value.slug == "not-an-activity"
    assert caught.value.detail == "the FIT file has no file_id message, so it is not an activity; upload an activity recording"


def test_worker_reports_unexpected_error() -> None:
    """An unexpected error in the decoding process comes back as DecodeWorkerError with its traceback."""
    body = read("garmin-fenix-5-run.fit")
    with pytest.raises(DecodeWorkerError) as caught:
        # A declared format that is not an ActivityFormat breaks the mismatch message in the child.
        decode_in_process(body, "gpx", timeout_s=30)  # type: ignore[arg-type]
    assert str(caught.value).startswith("the decoder raised an unexpected error:\nTraceback")
    assert "AttributeError: 'str' object has no attribute 'value'" in str(caught.value)


def test_worker_returns_decoded_upload() -> None:
    """The decoding process returns the same metric values as decoding in this process."""
    body = read("garmin-fenix-5-run.fit")
    assert decode_in_process(body, None, timeout_s=30) == decode_upload(body, None)
