"""Server messages of the WebSocket protocol, encoded to UTF-8 JSON bytes. No I/O here.

A push renders one body per view and reuses it for every subscription of that
view: only the short head with the message type and the client's subscription id
differs, so the entries are encoded once however many clients follow them.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def encode(message: dict[str, Any]) -> bytes:
    return _encoder.encode(message)


def raw(value: Any) -> msgspec.Raw:
    """Encode ``value`` once so it can be embedded in many messages."""
    return msgspec.Raw(_encoder.encode(value))


def with_head(kind: str, subscription_id: str, body: bytes) -> bytes:
    """Return ``body`` (an encoded JSON object) with ``type`` and ``id`` put first."""
    head = b'{"type":' + _encoder.encode(kind) + b',"id":' + _encoder.encode(subscription_id)
    if body == b"{}":
        return head + b"}"
    return head + b"," + body[1:]


def error(code: str, message: str, subscription_id: str | None = None) -> bytes:
    payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if subscription_id is not None:
        payload["id"] = subscription_id
    return encode(payload)


def welcome(gateway_id: str, max_subscriptions: int, max_updates_per_s: float) -> bytes:
    return encode(
        {
            "type": "welcome",
            "protocol": 1,
            "gateway": gateway_id,
            "max_subscriptions": max_subscriptions,
            "max_updates_per_s": max_updates_per_s,
        }
    )


def unsubscribed(subscription_id: str) -> bytes:
    return encode({"type": "unsubscribed", "id": subscription_id})


def pong(data: str | None) -> bytes:
    return encode({"type": "pong", "data": data})
