"""Client messages of the WebSocket protocol, their validation and the close codes. No I/O here.

Every message and close code is described in ``docs/websocket.md``.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from shared.schema import GroupName, IdString, field_error_from_validation

MAX_TOP = 100
MAX_AROUND = 10

SubscriptionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:~+-]+$")]
BoardName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PeriodName = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class CloseCode(enum.IntEnum):
    """Close codes the gateway sends; 4000-4999 are Rankstream's own (RFC 6455, section 7.4.2)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    IDLE_TIMEOUT = 4009
    TOO_MANY_CONNECTIONS = 4029


class Subscribe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="subscribe", tag_field="type"):
    """Follow a board period's top N, one athlete with K neighbours, or both; ``id`` names the subscription."""

    id: SubscriptionId
    board: BoardName
    period: PeriodName = "current"
    top: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP)] = 10
    user: IdString | None = None
    around: Annotated[int, msgspec.Meta(ge=0, le=MAX_AROUND)] = 0
    group: GroupName | None = None
    since: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="unsubscribe", tag_field="type"):
    """Stop the subscription with this id."""

    id: SubscriptionId


class Ping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="ping", tag_field="type"):
    """An application-level ping for clients that cannot send WebSocket ping frames (browsers)."""

    data: Annotated[str, msgspec.Meta(max_length=64)] | None = None


ClientMessage = Subscribe | Unsubscribe | Ping
MESSAGE_TYPES = ("subscribe", "unsubscribe", "ping")

_decoder = msgspec.json.Decoder(ClientMessage)
_type_probe = msgspec.json.Decoder(dict)


class ProtocolError(ValueError):
    """A client message that cannot be served; ``code`` is a stable machine-readable name.

    ``subscription_id`` is set when the message named one, so the client can tell
    which of its requests failed.
    """

    def __init__(self, code: str, message: str, subscription_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subscription_id = subscription_id


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Decode one text frame; raise ProtocolError naming the field at fault."""
    if isinstance(data, bytes):
        raise ProtocolError("binary_not_supported", "send JSON text frames; binary frames are not supported")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise _validation_error(data, error) from None
    except msgspec.DecodeError as error:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {error}") from None


def _validation_error(data: str, error: msgspec.ValidationError) -> ProtocolError:
    # The text parsed as JSON before validation failed, so only a non-object fails here.
    try:
        probe = _type_probe.decode(data)
    except msgspec.ValidationError:
        return ProtocolError("invalid_message", "the message must be a JSON object with a 'type' field")
    subscription_id = probe.get("id") if isinstance(probe.get("id"), str) else None
    if "type" not in probe:
        return ProtocolError("invalid_message", "type: is required; use one of " + ", ".join(MESSAGE_TYPES), subscription_id)
    if probe["type"] not in MESSAGE_TYPES:
        return ProtocolError("unknown_type", f"type {probe['type']!r} is unknown; use one of " + ", ".join(MESSAGE_TYPES), subscription_id)
    field_error = field_error_from_validation(error)
    return ProtocolError("invalid_message", f"{field_error.field}: {field_error.reason}", subscription_id)
