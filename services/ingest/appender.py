"""Appending validated events to the events stream with de-duplication by event id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources

import msgspec
import redis.asyncio as redis

from shared.names import Names
from shared.schema import ScoreEvent, StreamEvent

APPEND_SCRIPT = resources.files("services.ingest").joinpath("append.lua").read_text(encoding="utf-8")

DUPLICATE = "duplicate"
CONFLICT = "conflict"


def body_hash(event: ScoreEvent) -> str:
    """Hash what an event says, with occurred_at in UTC, so equal re-posts match."""
    canonical = msgspec.structs.replace(event, occurred_at=event.occurred_at.astimezone(timezone.utc))
    return hashlib.blake2b(msgspec.json.encode(canonical), digest_size=16).hexdigest()


class Appender:
    """Append events with one script call per request."""

    def __init__(self, client: redis.Redis, names: Names, dedupe_ttl_s: int) -> None:
        self.client = client
        self.names = names
        self.dedupe_ttl_s = dedupe_ttl_s
        self.script = client.register_script(APPEND_SCRIPT)

    async def append(self, events: Sequence[ScoreEvent], received_at: datetime) -> list[str]:
        """Return, per event, its new stream id, DUPLICATE or CONFLICT."""
        if not events:
            return []
        keys = [self.names.events_stream]
        args: list[str | bytes | int] = [self.dedupe_ttl_s]
        for event in events:
            keys.append(self.names.seen_event(event.event_id))
            stored = StreamEvent(
                event_id=event.event_id,
                user_id=event.user_id,
                metric=event.metric,
                value=event.value,
                occurred_at=event.occurred_at,
                received_at=received_at,
                display_name=event.display_name,
                groups=event.groups,
            )
            args.append(body_hash(event))
            args.append(msgspec.json.encode(stored))
        replies = await self.script(keys=keys, args=args)
        return [reply.decode() if isinstance(reply, bytes) else reply for reply in replies]
