"""The dead-letter stream: entries a consumer group gave up on, and how to re-drive them.

Each dead-letter entry has five fields:

- ``source_id``: the entry id in the events stream;
- ``group``: the consumer group that failed;
- ``event``: the original payload, empty when the entry had been deleted;
- ``error``: the last error;
- ``deliveries``: how often Redis had delivered the entry to the group.

A replay appends the payload to the events stream again with a ``group``
field, so only the group that failed processes it; every other group
acknowledges it without effect. The append and the removal from the
dead-letter stream happen in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis

from shared.names import Names

EVENT_FIELD = b"event"
# Set on a replayed entry: the only consumer group that should process it.
TARGET_GROUP_FIELD = b"group"


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    dead_letter_id: str
    source_id: str
    group: str
    event: bytes
    error: str
    deliveries: int

    @property
    def event_id(self) -> str | None:
        """The event id inside the payload, or None when the payload is empty or not JSON."""
        try:
            decoded = msgspec.json.decode(self.event)
        except msgspec.DecodeError:
            return None
        if isinstance(decoded, dict) and isinstance(decoded.get("event_id"), str):
            return decoded["event_id"]
        return None


def dead_letter_fields(source_id: str, group: str, payload: bytes, error: str, deliveries: int) -> dict[bytes, bytes | str | int]:
    """Return the fields of a new dead-letter entry."""
    return {
        b"source_id": source_id,
        b"group": group,
        EVENT_FIELD: payload,
        b"error": error,
        b"deliveries": deliveries,
    }


def _text(fields: dict, name: bytes) -> str:
    value = fields.get(name, b"")
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_dead_letter(entry_id: bytes | str, fields: dict) -> DeadLetter:
    deliveries = _text(fields, b"deliveries")
    return DeadLetter(
        dead_letter_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        source_id=_text(fields, b"source_id"),
        group=_text(fields, b"group"),
        event=fields.get(EVENT_FIELD, b""),
        error=_text(fields, b"error"),
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
    )


async def list_dead_letters(client: redis.Redis, names: Names, *, count: int) -> list[DeadLetter]:
    """Return up to ``count`` dead letters, oldest first."""
    reply = await client.xrange(names.dead_letter_stream, count=count)
    return [parse_dead_letter(entry_id, fields) for entry_id, fields in reply]


@dataclass(frozen=True)
class Replay:
    """The outcome of replaying one dead letter: the new stream id, or the reason it was not replayed."""

    dead_letter_id: str
    new_stream_id: str | None
    reason: str | None = None


async def replay_dead_letters(client: redis.Redis, names: Names, dead_letter_ids: Sequence[str]) -> list[Replay]:
    """Append each dead letter's event to the events stream for its group, then delete it.

    An id that is not in the dead-letter stream, or whose payload is empty,
    is reported with a reason and left alone.
    """
    results: list[Replay] = []
    for dead_letter_id in dead_letter_ids:
        found = await client.xrange(names.dead_letter_stream, min=dead_letter_id, max=dead_letter_id)
        if not found:
            results.append(Replay(dead_letter_id, None, "not found in the dead-letter stream"))
            continue
        letter = parse_dead_letter(*found[0])
        if not letter.event:
            results.append(Replay(dead_letter_id, None, "the entry was deleted from the events stream before it failed; nothing to replay"))
            continue
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(names.events_stream, {EVENT_FIELD: letter.event, TARGET_GROUP_FIELD: letter.group})
            pipe.xdel(names.dead_letter_stream, dead_letter_id)
            new_id, _deleted = await pipe.execute()
        results.append(Replay(dead_letter_id, new_id.decode() if isinstance(new_id, bytes) else new_id))
    return results


async def all_dead_letter_ids(client: redis.Redis, names: Names, *, page_size: int = 1000) -> list[str]:
    """Return the id of every dead letter, oldest first."""
    ids: list[str] = []
    start = "-"
    while True:
        reply = await client.xrange(names.dead_letter_stream, min=start, count=page_size)
        ids.extend(entry_id.decode() for entry_id, _fields in reply)
        if len(reply) < page_size:
            return ids
        start = f"({ids[-1]}"
