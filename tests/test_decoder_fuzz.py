"""Property-based fuzzing of the event decoder: any body yields results or a 4xx body error, never a crash."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings, strategies as st

from services.ingest.decode import BodyError, Rejection, decode_events
from services.ingest.rules import BIDI_CONTROLS, EventRules
from shared.boards import BoardRegistry, load_boards
from shared.schema import MAX_EXACT_INTEGER, ScoreEvent
from shared.settings import DEFAULT_METRIC_BOUNDS
from tests.conftest import BOARDS_FILE

BOARDS = BoardRegistry(load_boards(BOARDS_FILE))
RULES = EventRules.build(BOARDS.by_metric, (), DEFAULT_METRIC_BOUNDS, 60)
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
FIELDS = {"event_id", "user_id", "metric", "value", "occurred_at", "display_name", "groups"}
VALID = {"event_id": "e1", "user_id": "u1", "metric": "pushups", "value": 20, "occurred_at": "2026-12-04T11:00:00Z"}

# Bounded so the whole module runs in seconds on two cores.
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def field_root(field: str) -> str:
    """Return the top-level field of a path such as ``groups[0]``."""
    return field.split(".")[0].split("[")[0]


def check_decoded(body: bytes) -> None:
    """Decode ``body`` and assert the decoder's contract on whatever comes back."""
    try:
        items = decode_events(body, BOARDS, RULES, NOW, 1000)
    except BodyError as error:
        assert 400 <= error.status < 500
        assert error.detail
        return
    assert items
    for item in items:
        if isinstance(item, Rejection):
            assert item.error.field == "$" or field_root(item.error.field) in FIELDS, item.error.field
            assert item.error.reason
            continue
        assert isinstance(item, ScoreEvent)
        assert not isinstance(item.value, bool)
        assert math.isfinite(item.value)
        assert abs(item.value) <= MAX_EXACT_INTEGER
        assert item.metric in RULES.accepted_metrics
        assert item.occurred_at.tzinfo is not None
        if item.display_name is not None:
            assert not BIDI_CONTROLS.intersection(item.display_name)
            assert all(ord(character) >= 0x20 and character != "\x7f" for character in item.display_name)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    """Random bytes never raise anything but BodyError."""
    check_decoded(body)


@FUZZ
@given(json_values)
def test_arbitrary_json_documents(document: object) -> None:
    """Any JSON document, NaN and Infinity tokens included, decodes to results or a body error."""
    check_decoded(json.dumps(document).encode())


@FUZZ
@given(
    field=st.sampled_from(sorted(FIELDS)),
    value=json_values,
    shape=st.sampled_from(["object", "array", "envelope"]),
)
def test_one_field_replaced(field: str, value: object, shape: str) -> None:
    """A valid event with one field replaced by any JSON value is accepted or rejected naming that field."""
    event = {**VALID, field: value}
    body = {"object": event, "array": [event, VALID], "envelope": {"events": [event]}}[shape]
    check_decoded(json.dumps(body).encode())
    items = decode_events(json.dumps(body).encode(), BOARDS, RULES, NOW, 1000)
    if isinstance(items[0], Rejection):
        assert field_root(items[0].error.field) == field


@FUZZ
@given(position=st.integers(min_value=0, max_value=200), noise=st.text(min_size=1, max_size=8))
def test_text_inserted_into_valid_body(position: int, noise: str) -> None:
    """Characters inserted anywhere in a valid body never crash the decoder."""
    text = json.dumps([VALID, {**VALID, "event_id": "e2", "display_name": "Ada"}])
    cut = position % (len(text) + 1)
    check_decoded((text[:cut] + noise + text[cut:]).encode())


@FUZZ
@given(name=st.text(max_size=80))
def test_display_names_cleaned_or_rejected(name: str) -> None:
    """Any display name is stored clean or rejected naming display_name."""
    items = decode_events(json.dumps({**VALID, "display_name": name}).encode(), BOARDS, RULES, NOW, 1000)
    check_decoded(json.dumps({**VALID, "display_name": name}).encode())
    if isinstance(items[0], Rejection):
        assert items[0].error.field == "display_name"


def test_deep_nesting_is_body_error() -> None:
    """A body nested 100,000 levels deep is a 400 body error, not a recursion crash."""
    for body in (b"[" * 100_000, b'{"events":' * 50_000):
        try:
            decode_events(body, BOARDS, RULES, NOW, 1000)
        except BodyError as error:
            assert error.status == 400
            assert error.slug == "invalid-json"
        else:
            raise AssertionError("a deeply nested body was decoded")


def test_value_nested_deeply_rejected_by_name() -> None:
    """A value that is a deep array is rejected naming value."""
    body = json.dumps({**VALID, "value": 0}).replace('"value": 0', '"value": ' + "[" * 500 + "]" * 500).encode()
    items = decode_events(body, BOARDS, RULES, NOW, 1000)
    assert isinstance(items[0], Rejection)
    assert items[0].error.field == "value"
