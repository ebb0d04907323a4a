"""Client messages of the WebSocket protocol and their validation. No I/O here.

Close codes: 1000 normal, 1001 server going away, 1003 binary frame received,
1008 policy violation (too many invalid messages), 1009 message too big.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.schema import IdString, field_error_from_validation

MAX_TOP = 100
MAX_AROUND = 10


class Subscribe(msgspec.Struct, frozen=True, kw_only=True, tag="subscribe", tag_field="type"):
    """Follow a board period's top N, and optionally one athlete's standing."""

    board: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    top: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP)] = 10
    user: IdString | None = None
    around: Annotated[int, msgspec.Meta(ge=0, le=MAX_AROUND)] = 0
    period: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "current"


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True, tag="unsubscribe", tag_field="type"):
    """Stop following a board (every subscription to it on this connection)."""

    board: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


ClientMessage = Subscribe | Unsubscribe

_decoder = msgspec.json.Decoder(ClientMessage)


class ProtocolError(ValueError):
    """A client message that cannot be served; ``code`` is a stable machine-readable name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Decode one client message; raise ProtocolError naming the field at fault."""
    if isinstance(data, bytes):
        raise ProtocolError("binary_not_supported", "send JSON text frames; binary frames are not supported")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as error:
        text = str(error)
        if "Invalid value" in text and "`$.type`" in text or "missing required field `type`" in text:
            return _raise_unknown_type()
        field_error = field_error_from_validation(error)
        raise ProtocolError("invalid_message", f"{field_error.field}: {field_error.reason}") from None
    except msgspec.DecodeError as error:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {error}") from None


def _raise_unknown_type() -> ClientMessage:
    raise ProtocolError("unknown_type", "type must be 'subscribe' or 'unsubscribe'")
