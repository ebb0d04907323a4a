"""Decoding a POST /v1/events body into events and per-event rejections. No I/O here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from services.ingest.rules import EventRules
from shared.boards import BoardError, BoardRegistry
from shared.schema import FieldError, ScoreEvent, check_event, field_error_from_validation

MAX_EVENTS_PER_REQUEST = 1000


class BodyError(ValueError):
    """The body as a whole cannot be used: not JSON, wrong shape or too many events."""

    def __init__(self, status: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail


@dataclass(frozen=True)
class Rejection:
    event_id: str | None
    error: FieldError


Item = ScoreEvent | Rejection

_fast_list_decoder = msgspec.json.Decoder(list[ScoreEvent])
_fast_one_decoder = msgspec.json.Decoder(ScoreEvent)


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    events: list[ScoreEvent]


_fast_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _reject_nonstandard_constant(token: str) -> float:
    # Python's json accepts NaN and Infinity; keep them as floats so the value
    # check rejects that one event by name instead of the whole body.
    return float(token)


def _generic_decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    except RecursionError:
        # msgspec raises this for nesting deeper than its limit.
        raise BodyError(400, "invalid-json", "Body is not valid JSON", "the request body is nested too deeply; send events as flat JSON objects") from None
    try:
        return json.loads(body, parse_constant=_reject_nonstandard_constant)
    except (ValueError, RecursionError) as error:
        raise BodyError(400, "invalid-json", "Body is not valid JSON", f"the request body is not valid JSON: {error}") from None


def _fast_decode(body: bytes) -> list[ScoreEvent] | None:
    """Decode a body in which every event is valid, or return None to take the slow path."""
    stripped = body.lstrip()
    try:
        if stripped.startswith(b"["):
            return _fast_list_decoder.decode(body)
        if stripped.startswith(b"{"):
            if b'"events"' in body:
                return _fast_envelope_decoder.decode(body).events
            return [_fast_one_decoder.decode(body)]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return None


def _items_of(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        if "events" in document and "event_id" not in document:
            events = document["events"]
            if not isinstance(events, list):
                raise BodyError(400, "invalid-body", "Invalid body", "'events' must be an array of event objects")
            return events
        return [document]
    raise BodyError(400, "invalid-body", "Invalid body", "the body must be an event object, an array of events, or {\"events\": [...]}")


def _convert(item: Any) -> Item:
    event_id = item.get("event_id") if isinstance(item, dict) else None
    event_id = event_id if isinstance(event_id, str) else None
    if not isinstance(item, dict):
        return Rejection(event_id, FieldError("$", "each event must be a JSON object"))
    try:
        return msgspec.convert(item, ScoreEvent)
    except msgspec.ValidationError as error:
        return Rejection(event_id, field_error_from_validation(error))


def _checked(event: ScoreEvent, boards: BoardRegistry, rules: EventRules | None, now: datetime | None) -> Item:
    try:
        if rules is not None and now is not None:
            event = rules.apply(event, now)
        else:
            check_event(event)
        for board in boards.for_metric(event.metric):
            board.sort_score(event.value)
    except FieldError as error:
        return Rejection(event.event_id, error)
    except BoardError as error:
        return Rejection(event.event_id, FieldError("value", str(error)))
    return event


def check_item(event: ScoreEvent, boards: BoardRegistry, rules: EventRules | None = None, now: datetime | None = None) -> Item:
    """Return ``event`` if it passes the value and board checks of POST /v1/events, else its Rejection.

    With ``rules`` and ``now`` the anti-cheat rules apply too, and the event
    returned has its display name cleaned.
    """
    return _checked(event, boards, rules, now)


def decode_events(
    body: bytes,
    boards: BoardRegistry,
    rules: EventRules | None = None,
    now: datetime | None = None,
    max_events: int = MAX_EVENTS_PER_REQUEST,
) -> list[Item]:
    """Decode a request body into one item per event, in request order.

    Raises BodyError when the body is not JSON, has the wrong shape or contains more
    than ``max_events`` events; a bad event only rejects that event. With
    ``rules`` and ``now`` each event also passes the anti-cheat rules and comes
    back with its display name cleaned; without them only the value is checked.
    """
    events = _fast_decode(body)
    if events is not None:
        items: list[Item] = list(events)
    else:
        items = [_convert(item) for item in _items_of(_generic_decode(body))]
    if len(items) > max_events:
        raise BodyError(
            413, "too-many-events", "Too many events",
            f"the request holds {len(items)} events; send at most {max_events} per request",
        )
    if not items:
        raise BodyError(400, "invalid-body", "Invalid body", "the request contains no events; send at least one")
    return [item if isinstance(item, Rejection) else _checked(item, boards, rules, now) for item in items]
