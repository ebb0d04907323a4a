"""Message schemas: score events, stream entries and rank-change messages.

Structs are frozen and keyword-only; new fields get defaults and no field ever
changes type, so old and new services can share one stream during an upgrade.
Encoders and decoders are built once at import.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated

import msgspec

# The largest integer that a double, and so a sorted-set score, stores exactly.
MAX_EXACT_INTEGER = 2**53

IdString = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@~+-]+$")]
MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@~+-]+$")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class ScoreEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One workout result as a client posts it; ``event_id`` is the idempotency key."""

    event_id: IdString
    user_id: IdString
    metric: MetricName
    value: int | float
    occurred_at: AwareDatetime
    display_name: DisplayName | None = None
    groups: Annotated[list[GroupName], msgspec.Meta(max_length=16)] = []


class StreamEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A score event as stored in the events stream, with the time ingest received it."""

    event_id: str
    user_id: str
    metric: str
    value: int | float
    occurred_at: datetime
    received_at: datetime
    display_name: str | None = None
    groups: list[str] = []


class RankChange(msgspec.Struct, frozen=True, kw_only=True):
    """One athlete's move on a board period; ``old_*`` are None for a newcomer."""

    user_id: str
    score: float | int
    rank: int
    old_score: float | int | None
    old_rank: int | None


class BoardUpdate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The rank changes one ranker batch made to one board period, published on pub/sub.

    ``seq`` counts the batches applied to this board period, so a subscriber that
    sees a gap knows it missed a message and must read the board again.
    Defaults are left out of the JSON, so a message without ``group`` or
    ``final`` reads exactly as before those fields existed.
    """

    board: str
    period: str
    seq: int
    changes: list[RankChange]
    # The group of a group board's ranking; None on global boards.
    group: str | None = None
    # True on the one message sent when the period is archived (no event counts
    # any more); such a message carries no changes.
    final: bool = False


class EventResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The outcome of one posted event, in request order."""

    event_id: str | None
    status: str
    stream_id: str | None = None
    field: str | None = None
    reason: str | None = None


class FieldError(Exception):
    """A value that failed validation, with the field path and the fix."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_ERROR_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def field_error_from_validation(error: msgspec.ValidationError) -> FieldError:
    """Turn a msgspec validation error into a FieldError naming the field path."""
    message = str(error)
    missing = _MISSING_FIELD.match(message)
    match = _ERROR_PATH.match(message)
    assert match is not None
    path = (match.group("path") or "").lstrip(".")
    if missing:
        field = f"{path}.{missing.group('field')}" if path else missing.group("field")
        return FieldError(field, "is required")
    return FieldError(path or "$", match.group("reason"))


def check_event(event: ScoreEvent) -> None:
    """Raise FieldError for what the type annotations cannot express."""
    value = event.value
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError("value", "must be a finite number, not NaN or Infinity")
    if abs(value) > MAX_EXACT_INTEGER:
        raise FieldError("value", f"must be between -{MAX_EXACT_INTEGER} and {MAX_EXACT_INTEGER} so it is stored exactly")
    if event.display_name is not None and _CONTROL_CHARACTERS.search(event.display_name):
        raise FieldError("display_name", "must not contain control characters")


score_event_decoder = msgspec.json.Decoder(ScoreEvent)
stream_event_decoder = msgspec.json.Decoder(StreamEvent)
board_update_decoder = msgspec.json.Decoder(BoardUpdate)
json_encoder = msgspec.json.Encoder()
