"""Appending validated events to the events stream with de-duplication by event id.

Durability: with ``durability="aof"`` (the default) :meth:`Appender.append`
returns only after Redis has written the append to its append-only file and
fsynced it (``WAITAOF 1 0``, Redis and Valkey 7.2 or later). An accepted event
then survives a crash of the server or of the machine. With ``"relaxed"`` it
returns once the append is in memory. The append-only file then gets fsynced
by the server's ``appendfsync`` policy, and a power loss or operating-system
crash can lose what was accepted since the last fsync (about one second with
``appendfsync everysec``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources

import msgspec
import redis.asyncio as redis

from services.ingest.rate_limit import TAKE_TOKENS_LUA, Allowance, Bucket, RateLimited
from shared.command_batcher import CommandBatcher
from shared.names import Names
from shared.schema import ScoreEvent, StreamEvent

APPEND_SCRIPT = TAKE_TOKENS_LUA + resources.files("services.ingest").joinpath("append.lua").read_text(encoding="utf-8")

# Append pipelines in flight at once per ingest process: the next batch forms
# and goes out while one waits for the fsync.
IN_FLIGHT = 2

DUPLICATE = "duplicate"
CONFLICT = "conflict"
_FULL = b"full"
_LIMITED = b"limited"


class AppendUnavailable(Exception):
    """The events could not be accepted now; the client should retry after ``retry_after_s``."""

    slug = "unavailable"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


class BacklogFull(AppendUnavailable):
    """The stream contains its maximum of unacknowledged entries; nothing was appended."""

    slug = "backlog-full"


class NotDurable(AppendUnavailable):
    """The append was not confirmed on disk in time; it may still be processed, and a retry is a duplicate."""

    slug = "not-durable"


def body_hash(event: ScoreEvent) -> str:
    """Hash an event's content, with occurred_at in UTC, so equal re-posts match."""
    if event.occurred_at.tzinfo is not timezone.utc:
        event = msgspec.structs.replace(event, occurred_at=event.occurred_at.astimezone(timezone.utc))
    return hashlib.blake2b(msgspec.json.encode(event), digest_size=16).hexdigest()


class Appender:
    """Append events with one script call per request, batched with other requests' calls, then wait for the fsync unless relaxed."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        dedupe_ttl_s: int,
        *,
        durability: str = "aof",
        waitaof_timeout_ms: int = 5_000,
        max_backlog: int = 1_000_000,
        retry_after_s: int = 5,
    ) -> None:
        if durability not in ("aof", "relaxed"):
            raise ValueError(f"durability must be 'aof' or 'relaxed', not {durability!r}")
        self.client = client
        self.names = names
        self.dedupe_ttl_s = dedupe_ttl_s
        self.durability = durability
        self.waitaof_timeout_ms = waitaof_timeout_ms
        self.max_backlog = max_backlog
        self.retry_after_s = retry_after_s
        self.script = client.register_script(APPEND_SCRIPT)
        self.batcher = CommandBatcher(client, wait_aof_timeout_ms=None if durability == "relaxed" else waitaof_timeout_ms, max_in_flight=IN_FLIGHT)

    async def append(self, events: Sequence[ScoreEvent], received_at: datetime, bucket: Bucket | None = None) -> list[str]:
        """Return, per event, its new stream id, DUPLICATE or CONFLICT.

        With a ``bucket``, the same script call first takes the request's token
        from it (even with no events) and raises RateLimited, appending
        nothing, when the bucket is empty: one round trip for both. Raises
        BacklogFull when the stream is at its bound, and NotDurable
        when the fsync was not confirmed within ``waitaof_timeout_ms`` or
        the server cannot confirm it (no append-only file, or a Redis older
        than 7.2). Redis connection errors propagate.
        """
        if not events and bucket is None:
            return []
        stream = self.names.events_stream
        # Without a bucket the script leaves its key alone; the stream key keeps its place.
        keys = [stream, stream if bucket is None else bucket.key]
        args: list[str | bytes | int] = [self.dedupe_ttl_s, self.max_backlog, 0, 0] if bucket is None else [
            self.dedupe_ttl_s, self.max_backlog, bucket.capacity, bucket.per_minute,
        ]
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

        replies = await self._append_and_wait(keys, args)
        if replies and replies[0] == _LIMITED:
            assert bucket is not None, "the script takes no token without a bucket"
            raise RateLimited(Allowance(False, int(replies[1]), 0), bucket.per_minute)
        if replies and replies[0] == _FULL:
            raise BacklogFull(
                f"the event stream contains {replies[1]} unprocessed entries and its maximum is {self.max_backlog}, so nothing was stored; retry later",
                self.retry_after_s,
            )
        return [reply.decode() if isinstance(reply, bytes) else reply for reply in replies]

    async def _append_and_wait(self, keys: list[str], args: list) -> list:
        # Appends of concurrent requests share one pipeline, which ends with
        # WAITAOF unless durability is relaxed.
        reply = await self.batcher.call(self.script, keys, args)
        replies = reply.value
        if isinstance(replies, Exception):
            raise replies
        # Nothing to confirm when nothing was appended: a full stream, an empty
        # bucket, or a request without events that only took its token.
        if self.durability == "relaxed" or not replies or replies[0] in (_FULL, _LIMITED):
            return replies
        if isinstance(reply.on_disk, Exception):
            raise NotDurable(
                f"the server cannot confirm writes on disk ({reply.on_disk}); enable appendonly or set RANKSTREAM_DURABILITY=relaxed", self.retry_after_s
            )
        if reply.on_disk is None or reply.on_disk < 1:
            raise NotDurable(f"the append was not confirmed on disk within {self.waitaof_timeout_ms} ms; retry, a repeated event counts once", self.retry_after_s)
        return replies
