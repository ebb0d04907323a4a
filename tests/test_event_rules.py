"""Anti-cheat rules on POST /v1/events: exact numbers, known metrics, plausible values, sane times, clean names."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import msgspec
import pytest

from services.ingest.rules import Bounds, clean_display_name
from shared.schema import ScoreEvent
from shared.settings import Settings, SettingsError
from tests.helpers import ingest_client, new_key

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def fixed_clock() -> datetime:
    return NOW


def event(event_id: str, **changes: object) -> dict:
    return {
        "event_id": event_id,
        "user_id": "u1",
        "metric": "pushups",
        "value": 1200,
        "occurred_at": "2026-12-04T11:00:00Z",
        **changes,
    }


async def post(settings: Settings, body: object, **app_options) -> tuple[int, list[dict]]:
    key = await new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with ingest_client(settings, clock=fixed_clock, **app_options) as http:
        if isinstance(body, (bytes, str)):
            response = await http.post("/v1/events", data=body, headers=headers)
        else:
            response = await http.post("/v1/events", json=body, headers=headers)
        return response.status, (await response.json())["results"]


async def stream_entries(redis_client, settings: Settings) -> list[dict]:
    entries = await redis_client.xrange(f"{settings.namespace}:{{events}}:stream")
    return [msgspec.json.decode(fields[b"event"]) for _entry_id, fields in entries]


# Raw JSON value tokens that must be rejected naming `value`, with the reason each gets.
INEXACT_VALUES = [
    ("19933688932870350000", "must be between -9007199254740992 and 9007199254740992"),
    ("9223372036854775808", "must be between -9007199254740992 and 9007199254740992"),
    ("NaN", "must be a finite number, not NaN or Infinity"),
    ("Infinity", "must be a finite number, not NaN or Infinity"),
    ("-Infinity", "must be a finite number, not NaN or Infinity"),
    ("1e400", "must be a finite number, not NaN or Infinity"),
    ('"NaN"', "Expected `int | float`, got `str`"),
    ("-5", "-5 is implausible for metric 'pushups'; one event must be from 0 to 1500"),
]


async def test_inexact_numbers_rejected_beside_valid(settings: Settings, redis_client) -> None:
    """Each number a decoder could change is rejected naming value and stored nowhere; 1200 beside them is accepted."""
    bad = [
        '{"event_id":"bad-%d","user_id":"u1","metric":"pushups","value":%s,"occurred_at":"2026-12-04T11:00:00Z"}' % (index, token)
        for index, (token, _reason) in enumerate(INEXACT_VALUES)
    ]
    good = '{"event_id":"good","user_id":"u1","metric":"pushups","value":1200,"occurred_at":"2026-12-04T11:00:00Z"}'
    status, results = await post(settings, "[" + ",".join([*bad, good]) + "]")

    assert status == 202
    for index, (token, reason) in enumerate(INEXACT_VALUES):
        assert results[index] == {"event_id": f"bad-{index}", "status": "rejected", "field": "value", "reason": results[index]["reason"]}, token
        assert results[index]["reason"].startswith(reason), token
    assert results[-1]["status"] == "accepted"
    assert [entry["event_id"] for entry in await stream_entries(redis_client, settings)] == ["good"]
    seen = [key async for key in redis_client.scan_iter(match=f"{settings.namespace}:*:seen:*")]
    assert seen == [f"{settings.namespace}:{{events}}:seen:good".encode()]


async def test_unknown_metric_rejected(settings: Settings, redis_client) -> None:
    """A metric no board uses is rejected naming metric, with the accepted metrics listed."""
    status, results = await post(settings, [event("m1", metric="jumping_jacks")])

    assert status == 200
    assert results[0]["field"] == "metric"
    assert results[0]["reason"] == (
        "'jumping_jacks' is not accepted; use a metric of a board (pushups, run_5k_time_s, run_distance_m)"
        " or ask the operator to add it to RANKSTREAM_ALLOWED_METRICS"
    )
    assert await stream_entries(redis_client, settings) == []


async def test_allow_listed_metric_accepted(settings: Settings, redis_client) -> None:
    """A metric on RANKSTREAM_ALLOWED_METRICS is accepted although no board uses it."""
    status, results = await post(replace(settings, allowed_metrics=("jumping_jacks",)), [event("m1", metric="jumping_jacks")])

    assert status == 202
    assert results[0]["status"] == "accepted"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"value": 2000}, "2000 is implausible for metric 'pushups'; one event must be from 0 to 1500"),
        ({"metric": "run_5k_time_s", "value": 700.5}, "700.5 is implausible for metric 'run_5k_time_s'; one event must be from 755.36 to 86400"),
        ({"metric": "run_distance_m", "value": 400_000}, "400000 is implausible for metric 'run_distance_m'; one event must be from 0 to 350000"),
    ],
    ids=["2000 push-ups", "5 km under the world record", "400 km run"],
)
async def test_implausible_value_rejected(settings: Settings, redis_client, changes: dict, reason: str) -> None:
    """A value outside its metric's bounds is rejected naming value and the bounds."""
    status, results = await post(settings, [event("p1", **changes)])

    assert status == 200
    assert results[0] == {"event_id": "p1", "status": "rejected", "field": "value", "reason": reason}
    assert await stream_entries(redis_client, settings) == []


async def test_configured_bounds_replace_defaults(settings: Settings, redis_client) -> None:
    """RANKSTREAM_METRIC_BOUNDS changes one metric's range."""
    bounds = Settings.from_env({"RANKSTREAM_METRIC_BOUNDS": "pushups=10:3000"}).metric_bounds
    status, results = await post(replace(settings, metric_bounds=bounds), [event("p1", value=2000), event("p2", value=5)])

    assert status == 202
    assert results[0]["status"] == "accepted"
    assert results[1]["reason"] == "5 is implausible for metric 'pushups'; one event must be from 10 to 3000"


async def test_future_time_beyond_skew_rejected(settings: Settings, redis_client) -> None:
    """occurred_at up to the skew ahead is accepted; one second more is rejected naming occurred_at."""
    status, results = await post(
        settings, [event("t1", occurred_at="2026-12-04T12:05:00Z"), event("t2", occurred_at="2026-12-04T13:05:01+01:00")]
    )

    assert status == 202
    assert results[0]["status"] == "accepted"
    assert results[1] == {
        "event_id": "t2",
        "status": "rejected",
        "field": "occurred_at",
        "reason": "is 301 s in the future; at most 300 s of clock skew is allowed, so send when the workout ended",
    }


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("\uff21\uff44\uff41", "Ada"),
        ("\u202eAda\u202c", "Ada"),
        ("Ad\u2066a\u2069", "Ada"),
        ("A\u200fda", "Ada"),
        ("Ada\u2028Lovelace", "AdaLovelace"),
        ("  Ada  ", "Ada"),
        ("caf\u0065\u0301", "caf\u00e9"),
    ],
    ids=["fullwidth", "right-to-left override", "isolate", "right-to-left mark", "line separator", "outer spaces", "combining accent"],
)
async def test_display_name_cleaned(settings: Settings, redis_client, sent: str, stored: str) -> None:
    """Display names are NFKC-normalised and lose bidi and control characters before they are stored."""
    status, results = await post(settings, [event("n1", display_name=sent)])

    assert status == 202
    assert results[0]["status"] == "accepted"
    assert [entry["display_name"] for entry in await stream_entries(redis_client, settings)] == [stored]


async def test_display_name_control_characters_removed(settings: Settings, redis_client) -> None:
    """A bell or escape character in a display name is removed, not stored."""
    status, _results = await post(settings, '[{"event_id":"n1","user_id":"u1","metric":"pushups","value":1,'
                                            '"occurred_at":"2026-12-04T11:00:00Z","display_name":"Ada\\u0007\\u001b[31m"}]')

    assert status == 202
    assert [entry["display_name"] for entry in await stream_entries(redis_client, settings)] == ["Ada[31m"]


async def test_display_name_without_visible_characters_rejected(settings: Settings, redis_client) -> None:
    """A name that is only bidi controls is rejected naming display_name."""
    status, results = await post(settings, [event("n1", display_name="\u202e\u202c")])

    assert status == 200
    assert results[0]["field"] == "display_name"
    assert results[0]["reason"] == "must contain visible characters; omit display_name to keep the current one"


async def test_display_name_too_long_after_normalisation(settings: Settings, redis_client) -> None:
    """A name that NFKC expands past 64 characters is rejected naming display_name."""
    # U+FDFA is one character that NFKC expands to 18.
    status, results = await post(settings, [event("n1", display_name="\ufdfa" * 4)])

    assert status == 200
    assert results[0]["field"] == "display_name"
    assert results[0]["reason"] == "is 72 characters after NFKC normalisation; send at most 64"


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", "u 1"), ("user_id", "u{1}"), ("event_id", "e\u00e91"), ("event_id", "e/1"), ("groups", ["club one"])],
    ids=["space", "braces", "accented letter", "slash", "group with space"],
)
async def test_id_character_set_enforced(settings: Settings, redis_client, field: str, value: object) -> None:
    """Ids outside A-Z a-z 0-9 . _ : @ ~ + - are rejected naming the field."""
    status, results = await post(settings, [{**event("i1"), field: value}])

    assert status == 200
    assert results[0]["status"] == "rejected"
    assert results[0]["field"] == ("groups[0]" if field == "groups" else field)
    assert results[0]["reason"] == "Expected `str` matching regex '^[A-Za-z0-9._:@~+-]+$'"


async def test_conflicting_repost_changes_nothing(settings: Settings, redis_client) -> None:
    """The same event_id with 9999 instead of 1500 is a conflict; an identical re-post stays duplicate."""
    first = event("c1", metric="run_distance_m", value=1500)
    _status, accepted = await post(settings, [first])
    _status, conflict = await post(settings, [{**first, "value": 9999}])
    _status, duplicate = await post(settings, [first])

    assert accepted[0]["status"] == "accepted"
    assert conflict[0]["status"] == "conflict"
    assert conflict[0]["field"] == "event_id"
    assert duplicate == [{"event_id": "c1", "status": "duplicate"}]
    assert [entry["value"] for entry in await stream_entries(redis_client, settings)] == [1500]


def test_clean_display_name_keeps_emoji_sequences() -> None:
    """Zero-width joiners inside emoji sequences are kept: only bidi and control characters go."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_display_name(f"Ada {family}") == f"Ada {family}"


def test_bounds_describe_open_sides() -> None:
    """One-sided bounds read as 'at least' or 'at most'."""
    assert Bounds(0, None).describe() == "at least 0"
    assert Bounds(None, 2.5).describe() == "at most 2.5"
    assert Bounds(None, 2.5).contains(-1e300)
    assert not Bounds(0, None).contains(-0.001)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RANKSTREAM_METRIC_BOUNDS", "pushups=5", "RANKSTREAM_METRIC_BOUNDS entry 'pushups=5' is invalid; write METRIC=MIN:MAX, such as pushups=0:1500, leaving a side empty for no bound"),
        ("RANKSTREAM_METRIC_BOUNDS", "pushups=9:1", "RANKSTREAM_METRIC_BOUNDS entry 'pushups=9:1' has a minimum above its maximum; swap them"),
        ("RANKSTREAM_METRIC_BOUNDS", "pushups=nan:1", "RANKSTREAM_METRIC_BOUNDS entry 'pushups=nan:1' has bound 'nan', which is not a finite number; write METRIC=MIN:MAX, such as pushups=0:1500"),
        ("RANKSTREAM_ALLOWED_METRICS", "steps,Steps", "RANKSTREAM_ALLOWED_METRICS contains 'Steps'; list metric names of lower-case letters, digits and '_', separated by commas"),
        ("RANKSTREAM_RATE_LIMIT_PER_MINUTE", "-1", "RANKSTREAM_RATE_LIMIT_PER_MINUTE=-1 is out of range; set it to a whole number from 0 to 6000000"),
    ],
)
def test_security_settings_validated(variable: str, value: str, message: str) -> None:
    """A bad limit setting raises SettingsError naming the variable and the fix."""
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value) == message


def test_open_bound_setting_parsed() -> None:
    """An empty side of METRIC=MIN:MAX means no bound on that side."""
    bounds = Settings.from_env({"RANKSTREAM_METRIC_BOUNDS": "plank_s=:3600, pushups=0:"}).metric_bounds
    assert bounds["plank_s"] == (None, 3600.0)
    assert bounds["pushups"] == (0.0, None)
    assert bounds["run_5k_time_s"] == (755.36, 86_400)


async def test_metric_of_board_added_later_accepted(settings: Settings, redis_client) -> None:
    """A board added to the registry after startup makes its metric accepted without a restart."""
    from shared.boards import Board, BoardRegistry, Operator, load_boards
    from services.ingest.rules import EventRules

    registry = BoardRegistry(load_boards(settings.boards_file))
    rules = EventRules.build(registry.by_metric, (), {}, 60)
    before = "jumping_jacks" in rules.accepted_metrics
    registry.replace([*registry, Board(id="jacks", metric="jumping_jacks", operator=Operator.SUM)])

    assert before is False
    assert "jumping_jacks" in rules.accepted_metrics
    assert rules.apply(msgspec.convert(event("j1", metric="jumping_jacks"), ScoreEvent), NOW).metric == "jumping_jacks"
