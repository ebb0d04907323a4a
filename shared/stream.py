"""The events stream contract and the consumer-group loop both consumers share.

Contract: each entry of ``Names.events_stream`` has one field, ``event``, whose
value is a JSON :class:`shared.schema.StreamEvent`. Ingest appends; the
``ranker`` and ``persister`` consumer groups each read every entry.

Delivery is at least once. A consumer acknowledges an entry only after its
effect is durable, so an entry whose consumer dies stays pending and is handed
to another consumer by XAUTOCLAIM once it has been idle for ``claim_idle_ms``.
Handlers must therefore be idempotent. An entry that cannot be decoded goes to
the dead-letter stream and is acknowledged, so it is never reclaimed forever.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.metrics import BATCH_DURATION, BATCH_SIZE, DEAD_LETTERS
from shared.names import Names
from shared.schema import StreamEvent, stream_event_decoder

log = structlog.get_logger(__name__)

EVENT_FIELD = b"event"


@dataclass(frozen=True)
class Entry:
    """One decoded stream entry."""

    stream_id: str
    event: StreamEvent


def default_consumer_name(service: str) -> str:
    """Return a consumer name unique on this host: service, host name and process id."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


async def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` from its first entry, creating the stream if needed; no-op if it exists."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        log.info("consumer group created", stream=stream, group=group)
    except ResponseError as error:
        if not str(error).startswith("BUSYGROUP"):
            raise


def encode_entry(event: StreamEvent) -> dict[bytes, bytes]:
    return {EVENT_FIELD: msgspec.json.encode(event)}


Handler = Callable[[Sequence[Entry]], Awaitable[None]]


class StreamConsumer:
    """Read a consumer group in batches, hand them to ``handler`` and acknowledge.

    ``handler`` receives decoded entries and must make their effects durable
    before it returns; the consumer then acknowledges them. If it raises, the
    entries stay pending and are retried after ``claim_idle_ms``.
    """

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        read_count: int = 500,
        block_ms: int = 100,
        claim_idle_ms: int = 30_000,
        claim_interval_s: float = 5.0,
        batch_wait_ms: int = 0,
    ) -> None:
        self.client = client
        self.names = names
        self.stream = names.events_stream
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.read_count = read_count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval_s = claim_interval_s
        self.batch_wait_ms = batch_wait_ms
        self._stopping = asyncio.Event()
        self.batches_handled = 0
        # Set once the group exists and this consumer has read from it; readiness waits on it.
        self.joined = asyncio.Event()
        # Export the group's dead-letter count as 0 from the start rather than leaving it absent.
        DEAD_LETTERS.labels(group=group)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; retry Redis connection errors with backoff."""
        log.info("consumer started", group=self.group, consumer=self.consumer, stream=self.stream)
        backoff_s = 0.1
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        own_pending_done = False
        while not self._stopping.is_set():
            try:
                await ensure_group(self.client, self.stream, self.group)
                if not own_pending_done:
                    # Entries this consumer name read before a restart are still ours.
                    await self._drain_own_pending()
                    own_pending_done = True
                    self.joined.set()
                if loop.time() >= next_claim:
                    await self._claim_idle()
                    next_claim = loop.time() + self.claim_interval_s
                await self._read_new()
                backoff_s = 0.1
            except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as error:
                log.warning("redis unavailable, retrying", group=self.group, consumer=self.consumer, error=str(error), backoff_s=backoff_s)
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            except Exception:
                log.exception("batch failed, entries stay pending", group=self.group, consumer=self.consumer)
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        log.info("consumer stopped", group=self.group, consumer=self.consumer, batches=self.batches_handled)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _read_new(self) -> None:
        reply = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.read_count, block=self.block_ms
        )
        if not reply:
            return
        raw = list(reply[0][1])
        # Fill the batch up to read_count for at most batch_wait_ms, so a slow
        # trickle of events still makes few, large batches.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_ms / 1000
        while len(raw) < self.read_count and not self._stopping.is_set():
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                break
            more = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.read_count - len(raw), block=remaining_ms
            )
            if more:
                raw.extend(more[0][1])
        await self._handle(raw)

    async def _drain_own_pending(self) -> None:
        start = "0"
        while not self._stopping.is_set():
            reply = await self.client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.read_count)
            raw = reply[0][1] if reply else []
            if not raw:
                return
            await self._handle(raw)
            start = _as_str(raw[-1][0])

    async def _claim_idle(self) -> None:
        start = "0-0"
        while not self._stopping.is_set():
            next_start, raw, _deleted = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start, count=self.read_count
            )
            if raw:
                log.warning("claimed idle entries", group=self.group, consumer=self.consumer, count=len(raw))
                await self._handle(raw)
            start = _as_str(next_start)
            if start == "0-0":
                return

    async def _handle(self, raw: list) -> None:
        started_s = time.perf_counter()
        entries: list[Entry] = []
        dead: list[tuple[str, bytes, str]] = []
        for entry_id, fields in raw:
            stream_id = _as_str(entry_id)
            if fields is None:
                # Deleted from the stream while pending: nothing left to process.
                dead.append((stream_id, b"", "entry deleted while pending"))
                continue
            payload = fields.get(EVENT_FIELD)
            try:
                entries.append(Entry(stream_id, stream_event_decoder.decode(payload)))
            except (msgspec.DecodeError, TypeError) as error:
                dead.append((stream_id, payload or b"", f"undecodable entry: {error}"))
        if dead:
            await self._dead_letter(dead)
        if entries:
            await self.handler(entries)
            await self.client.xack(self.stream, self.group, *[entry.stream_id for entry in entries])
        self.batches_handled += 1
        BATCH_SIZE.labels(group=self.group).observe(len(raw))
        BATCH_DURATION.labels(group=self.group).observe(time.perf_counter() - started_s)

    async def _dead_letter(self, dead: list[tuple[str, bytes, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for stream_id, payload, reason in dead:
                pipe.xadd(self.names.dead_letter_stream, {b"source_id": stream_id, b"group": self.group, EVENT_FIELD: payload, b"error": reason})
                pipe.xack(self.stream, self.group, stream_id)
            await pipe.execute()
        DEAD_LETTERS.labels(group=self.group).inc(len(dead))
        for stream_id, _payload, reason in dead:
            log.error("entry moved to dead-letter stream", group=self.group, stream_id=stream_id, error=reason)


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
