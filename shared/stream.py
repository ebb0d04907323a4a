"""The events stream contract and the consumer-group loop both consumers share.

Contract: each entry of ``Names.events_stream`` has the field ``event``, whose
value is a JSON :class:`shared.schema.StreamEvent`. Ingest appends; the
``ranker`` and ``persister`` consumer groups each read every entry. An entry
replayed from the dead-letter stream also has a ``group`` field, and only that
group processes it.

Delivery is at least once. A consumer acknowledges an entry only after its
handler returned, so an entry whose consumer dies stays pending and is handed
to another consumer by XAUTOCLAIM once it has been idle for ``claim_idle_ms``.
Handlers must therefore be idempotent. Messages a handler returns in a
:class:`HandlerResult` are published in the transaction that acknowledges
its batch.

Failures, by kind:

- A handler raises :class:`DependencyUnavailable` (or a Redis connection
  error): a service it needs is down. The same batch is retried with
  exponential backoff and jitter until it succeeds or the consumer stops.
  The entries stay pending meanwhile, and no try is counted.
- A handler returns rejections: those entries can never succeed. They go to
  the dead-letter stream with the reason and are acknowledged with the rest.
- A handler raises anything else, or runs longer than ``handle_timeout_s``:
  a batch of several entries is retried one entry at a time, so one bad entry
  does not hold back the others. An entry that fails alone keeps its error in
  ``Names.failed_entries(group)`` and stays pending. Once Redis has delivered
  it ``max_deliveries`` times, it goes to the dead-letter stream with that
  error and is acknowledged.
- An entry that cannot be decoded goes to the dead-letter stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.consumer_cleanup import IdleConsumerCleaner
from shared.dead_letters import EVENT_FIELD, TARGET_GROUP_FIELD, dead_letter_fields
from shared.metrics import BATCH_DURATION, BATCH_SIZE, DEAD_LETTERS
from shared.names import CONSUMER_GROUPS, Names
from shared.retention import StreamTrimmer
from shared.schema import StreamEvent, stream_event_decoder
from shared.settings import Settings

log = structlog.get_logger(__name__)

# Errors that mean Redis could not be reached; the work is retried, never counted as a failed try.
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError)

MAX_BACKOFF_S = 5.0


class DependencyUnavailable(Exception):
    """Raised by a handler when a service it needs is down; the batch is retried later, not counted as a failure."""


class Entry(msgspec.Struct, frozen=True):
    """One decoded stream entry."""

    stream_id: str
    event: StreamEvent


# An entry to dead-letter: stream id, payload, error, deliveries (None until looked up).
DeadEntry = tuple[str, bytes, str, int | None]

class HandlerResult(msgspec.Struct, frozen=True, kw_only=True):
    """A handler's outcome with messages to publish when its batch is acknowledged.

    ``rejected`` are the entries it rejected for good (stream id -> reason).
    ``publish`` are (channel, message) pairs, published in the transaction
    that acknowledges the batch, so a batch costs no round trip of its own
    for them. Entries left pending publish nothing.
    """

    rejected: dict[str, str] = {}
    publish: list[tuple[str, bytes]] = []


# A handler returns None, the entries it rejected for good (stream id -> reason), or a HandlerResult.
Handler = Callable[[Sequence[Entry]], Awaitable[Mapping[str, str] | HandlerResult | None]]


def default_consumer_name(service: str) -> str:
    """Return a consumer name unique on this host: service, host name and process id."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


def consumer_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Return the StreamConsumer keyword arguments that come from settings, updated by ``overrides``."""
    options: dict[str, Any] = {
        "read_count": settings.read_count,
        "block_ms": settings.block_ms,
        "claim_idle_ms": settings.claim_idle_ms,
        "claim_interval_s": settings.claim_interval_ms / 1000,
        "max_deliveries": settings.max_deliveries,
        "handle_timeout_s": float(settings.handle_timeout_s),
        "stop_timeout_s": float(settings.stop_timeout_s),
        "consumer_idle_delete_ms": settings.consumer_idle_delete_ms,
        "trim_interval_s": settings.trim_interval_ms / 1000,
    }
    options.update(overrides)
    return options


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


def backoff_delay_s(attempt: int, *, base_s: float = 0.1, cap_s: float = MAX_BACKOFF_S) -> float:
    """Return a delay drawn uniformly from zero to the exponential backoff of ``attempt`` (0-based)."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


class _StopRequested(Exception):
    """The consumer is stopping while a batch waits for a dependency; the batch stays pending."""


class StreamConsumer:
    """Read a consumer group in batches, hand them to ``handler`` and acknowledge.

    ``handler`` receives decoded entries and must make their effects durable
    before it returns; the consumer then acknowledges them. See the module
    docstring for what happens when it fails.

    :meth:`run` also, on a timer: claims entries idle for ``claim_idle_ms``
    (``claim_interval_s``), deletes consumers idle for
    ``consumer_idle_delete_ms`` that own no pending entries (0 turns this off),
    and trims the stream below what every group acknowledged
    (``trim_interval_s``, 0 turns this off).
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
        max_deliveries: int = 5,
        handle_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        consumer_idle_delete_ms: int = 3_600_000,
        trim_interval_s: float = 1.0,
        groups: Sequence[str] = CONSUMER_GROUPS,
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
        self.max_deliveries = max_deliveries
        self.handle_timeout_s = handle_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.consumer_idle_delete_ms = consumer_idle_delete_ms
        self.trim_interval_s = trim_interval_s
        self.failed_key = names.failed_entries(group)
        self.trimmer = StreamTrimmer(client, self.stream, groups)
        self.cleaner = IdleConsumerCleaner(client, self.stream, group, consumer, consumer_idle_delete_ms)
        self._unparsed = _unparsed_reads(client)
        self._stopping = asyncio.Event()
        self.batches_handled = 0
        self.dead_lettered = 0
        # Set once the group exists and this consumer has read from it; readiness waits on it.
        self.joined = asyncio.Event()
        # Export the group's dead-letter count as 0 from the start rather than leaving it absent.
        DEAD_LETTERS.labels(group=group)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`, then let the batch in flight finish for up to ``stop_timeout_s``.

        A batch still running after ``stop_timeout_s`` is cancelled; its
        entries stay pending and are handled again later, by this consumer
        name or by another consumer. Cancelling :meth:`run` cancels the loop
        at once and re-raises.
        """
        log.info("consumer started", group=self.group, consumer=self.consumer, stream=self.stream)
        consuming = asyncio.create_task(self._consume(), name=f"consume-{self.group}")
        stop_requested = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({consuming, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if not consuming.done():
                await self._finish_in_flight(consuming)
            if not consuming.cancelled():
                consuming.result()
        except asyncio.CancelledError:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
            raise
        finally:
            stop_requested.cancel()
        log.info("consumer stopped", group=self.group, consumer=self.consumer, batches=self.batches_handled, dead_lettered=self.dead_lettered)

    async def _finish_in_flight(self, consuming: asyncio.Task) -> None:
        # The shield keeps wait_for from cancelling the batch before the grace period ends.
        try:
            await asyncio.wait_for(asyncio.shield(consuming), self.stop_timeout_s)
        except TimeoutError:
            log.warning("stop timed out, cancelling batch", group=self.group, consumer=self.consumer, stop_timeout_s=self.stop_timeout_s)
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_claim_s = 0.0
        next_trim_s = 0.0
        own_pending_done = False
        # The group is created again only after Redis was unreachable or returned NOGROUP (it restarted
        # without its data), because creating it before every read costs a round trip per batch.
        group_exists = False
        while not self._stopping.is_set():
            try:
                if not group_exists:
                    await ensure_group(self.client, self.stream, self.group)
                    group_exists = True
                if not own_pending_done:
                    # Entries this consumer name read before a restart are still ours.
                    await self._drain_own_pending()
                    own_pending_done = True
                    self.joined.set()
                if loop.time() >= next_claim_s:
                    await self._claim_idle()
                    if self.consumer_idle_delete_ms > 0:
                        await self.cleaner.delete_idle_consumers()
                    next_claim_s = loop.time() + self.claim_interval_s
                if self.trim_interval_s > 0 and loop.time() >= next_trim_s:
                    await self.trimmer.trim_acknowledged()
                    next_trim_s = loop.time() + self.trim_interval_s
                await self._read_new()
                failures = 0
            except _StopRequested:
                break
            except REDIS_UNAVAILABLE as error:
                group_exists = False
                delay_s = backoff_delay_s(failures)
                log.warning("redis unavailable, retrying", group=self.group, consumer=self.consumer, error=str(error), delay_s=round(delay_s, 3))
                failures += 1
                await self._sleep(delay_s)
            except Exception as error:
                delay_s = backoff_delay_s(failures)
                if isinstance(error, ResponseError) and str(error).startswith("NOGROUP"):
                    # The stream or the group was deleted, for example by a Redis restart without its data.
                    group_exists = False
                    log.warning("consumer group missing, creating it", group=self.group, consumer=self.consumer, stream=self.stream, delay_s=round(delay_s, 3))
                else:
                    log.exception("consumer step failed, retrying", group=self.group, consumer=self.consumer, delay_s=round(delay_s, 3))
                failures += 1
                await self._sleep(delay_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _read_new(self) -> None:
        raw = await self._xreadgroup(">", self.read_count, self.block_ms)
        if not raw:
            return
        # Fill the batch up to read_count for at most batch_wait_ms, so a slow
        # trickle of events still makes few, large batches.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_ms / 1000
        while len(raw) < self.read_count and not self._stopping.is_set():
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                break
            raw.extend(await self._xreadgroup(">", self.read_count - len(raw), remaining_ms))
        await self._handle(raw, redelivered=False)

    async def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list:
        """Read up to ``count`` entries of the group after ``start``; return them as Redis sent them, [id, [field, value, ...]] each.

        redis-py would build a dict per entry; _handle reads the one or two fields it needs itself.
        """
        command: list = ["GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        reply = await self._unparsed.execute_command("XREADGROUP", *command, "STREAMS", self.stream, start)
        if not reply:
            return []
        # RESP2 returns [[stream, entries]] and RESP3 {stream: entries}.
        return list(next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1])

    async def _drain_own_pending(self) -> None:
        start = "0"
        while not self._stopping.is_set():
            raw = await self._xreadgroup(start, self.read_count, None)
            if not raw:
                return
            await self._handle(raw, redelivered=True)
            start = _as_str(raw[-1][0])

    async def _claim_idle(self) -> None:
        start = "0-0"
        while not self._stopping.is_set():
            reply = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start, count=self.read_count
            )
            # Redis 7 adds a third element: ids of entries deleted from the stream, which
            # XAUTOCLAIM has already dropped from the pending list. Redis 6.2 returns them
            # as entries without fields instead, and _handle dead-letters those.
            next_start, raw = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                log.warning("pending entries deleted from the stream", group=self.group, stream_ids=[_as_str(i) for i in deleted])
            if raw:
                log.warning("claimed idle entries", group=self.group, consumer=self.consumer, count=len(raw), first_id=_as_str(raw[0][0]))
                await self._handle(raw, redelivered=True)
            start = _as_str(next_start)
            if start == "0-0":
                return

    async def _handle(self, raw: list, *, redelivered: bool) -> None:
        """Decode, set aside what must not be handled, handle the rest and acknowledge."""
        started_s = time.perf_counter()
        entries: list[Entry] = []
        dead: list[DeadEntry] = []
        skipped: list[str] = []
        for entry_id, fields in raw:
            stream_id = _as_str(entry_id)
            if fields is None:
                dead.append((stream_id, b"", "entry deleted from the stream while pending", None))
                continue
            payload, target = _event_fields(fields)
            if target is not None and _as_str(target) != self.group:
                skipped.append(stream_id)
                continue
            try:
                entries.append(Entry(stream_id, stream_event_decoder.decode(payload)))
            except (msgspec.DecodeError, TypeError) as error:
                dead.append((stream_id, payload or b"", f"undecodable entry: {error}", None))

        # A redelivered entry that has been handed out too often is given up on before another try.
        if redelivered and entries:
            entries, exhausted = await self._split_exhausted(entries)
            dead.extend(exhausted)
        if dead or skipped:
            await self._settle([], dead, skipped)
        if entries:
            # Every log line about this batch carries its stream id range, bound once here.
            with structlog.contextvars.bound_contextvars(
                first_stream_id=entries[0].stream_id, last_stream_id=entries[-1].stream_id, batch_entries=len(entries)
            ):
                await self._process(entries, redelivered=redelivered)
        self.batches_handled += 1
        BATCH_SIZE.labels(group=self.group).observe(len(raw))
        BATCH_DURATION.labels(group=self.group).observe(time.perf_counter() - started_s)

    async def _process(self, entries: list[Entry], *, redelivered: bool) -> None:
        """Handle ``entries``; on failure retry them one by one and record what still fails.

        Only a ``redelivered`` entry can have a recorded error, so only then is one forgotten on acknowledgement.
        """
        try:
            result = await self._call_handler(entries)
        except _StopRequested:
            raise
        except Exception as error:
            if len(entries) == 1:
                await self._record_failure(entries[0], error)
                return
            log.warning("batch failed, retrying entries one by one", group=self.group, entries=len(entries), first_id=entries[0].stream_id, error=_describe(error))
            for entry in entries:
                await self._process([entry], redelivered=redelivered)
            return

        rejected = result.rejected
        if not rejected:
            await self._settle([entry.stream_id for entry in entries], [], [], forget_errors=redelivered, publish=result.publish)
            return
        by_id = {entry.stream_id: entry for entry in entries}
        dead = [(stream_id, msgspec.json.encode(by_id[stream_id].event), reason, None) for stream_id, reason in rejected.items() if stream_id in by_id]
        acknowledged = [entry.stream_id for entry in entries if entry.stream_id not in rejected]
        await self._settle(acknowledged, dead, [], forget_errors=redelivered, publish=result.publish)

    async def _call_handler(self, entries: list[Entry]) -> HandlerResult:
        """Run the handler, retrying while a dependency is unavailable; raise _StopRequested on stop."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.handle_timeout_s):
                    outcome = await self.handler(entries)
                if isinstance(outcome, HandlerResult):
                    return outcome
                return HandlerResult(rejected=dict(outcome or {}))
            except (DependencyUnavailable, *REDIS_UNAVAILABLE) as error:
                if self._stopping.is_set():
                    log.info("stopping, batch stays pending", group=self.group, entries=len(entries), first_id=entries[0].stream_id)
                    raise _StopRequested from error
                delay_s = backoff_delay_s(attempt)
                log.warning("dependency unavailable, retrying batch", group=self.group, entries=len(entries), first_id=entries[0].stream_id, attempt=attempt + 1, delay_s=round(delay_s, 3), error=_describe(error))
                attempt += 1
                await self._sleep(delay_s)

    async def _record_failure(self, entry: Entry, error: BaseException) -> None:
        """Keep the error of an entry that failed alone; dead-letter it once it was delivered max_deliveries times."""
        reason = _describe(error)
        deliveries = await self._delivery_count(entry.stream_id)
        if deliveries >= self.max_deliveries:
            await self._settle([], [(entry.stream_id, msgspec.json.encode(entry.event), reason, deliveries)], [])
            return
        await self.client.hset(self.failed_key, entry.stream_id, reason)
        log.warning("entry failed, stays pending", group=self.group, stream_id=entry.stream_id, event_id=entry.event.event_id, deliveries=deliveries, max_deliveries=self.max_deliveries, error=reason)

    async def _with_delivery_counts(self, dead: list[DeadEntry]) -> list[DeadEntry]:
        unknown = [item for item in dead if item[3] is None]
        if not unknown:
            return dead
        async with self.client.pipeline(transaction=False) as pipe:
            for stream_id, *_ in unknown:
                pipe.xpending_range(self.stream, self.group, min=stream_id, max=stream_id, count=1)
            replies = iter(await pipe.execute())
        return [item if item[3] is not None else (*item[:3], _times_delivered(next(replies))) for item in dead]

    async def _delivery_count(self, stream_id: str) -> int:
        reply = await self.client.xpending_range(self.stream, self.group, min=stream_id, max=stream_id, count=1)
        return _times_delivered(reply)

    async def _split_exhausted(self, entries: list[Entry]) -> tuple[list[Entry], list[DeadEntry]]:
        """Separate entries delivered more than max_deliveries times, with their last recorded error."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xpending_range(self.stream, self.group, min=entry.stream_id, max=entry.stream_id, count=1)
            replies = await pipe.execute()
        keep: list[Entry] = []
        over: list[tuple[Entry, int]] = []
        for entry, reply in zip(entries, replies, strict=True):
            deliveries = _times_delivered(reply)
            if deliveries > self.max_deliveries:
                over.append((entry, deliveries))
            else:
                keep.append(entry)
        if not over:
            return keep, []
        errors = await self.client.hmget(self.failed_key, [entry.stream_id for entry, _ in over])
        exhausted = [
            (entry.stream_id, msgspec.json.encode(entry.event), _as_str(error) if error else f"delivered {deliveries} times without success", deliveries)
            for (entry, deliveries), error in zip(over, errors, strict=True)
        ]
        return keep, exhausted

    async def _settle(
        self, acknowledged: list[str], dead: list[DeadEntry], skipped: list[str], *, forget_errors: bool = True, publish: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Dead-letter, acknowledge, with ``forget_errors`` forget the recorded errors of entries, and publish ``publish``, in one transaction.

        The transaction keeps a crash from leaving an entry both dead-lettered
        and pending, which would dead-letter it twice. Callers pass
        ``forget_errors=False`` for entries read new, which have no recorded
        error, to save sending every id twice.
        NOTE: an entry read new whose handler outlived ``claim_idle_ms`` may
        have been claimed and failed elsewhere; its recorded error then stays
        in ``failed_key`` after the acknowledgement. Nothing reads it again.
        """
        dead = await self._with_delivery_counts(dead)
        async with self.client.pipeline(transaction=True) as pipe:
            for stream_id, payload, reason, deliveries in dead:
                pipe.xadd(self.names.dead_letter_stream, dead_letter_fields(stream_id, self.group, payload, reason, deliveries))
            finished = acknowledged + skipped + [stream_id for stream_id, *_ in dead]
            if finished:
                pipe.xack(self.stream, self.group, *finished)
                if forget_errors:
                    pipe.hdel(self.failed_key, *finished)
            for channel, message in publish:
                pipe.publish(channel, message)
            await pipe.execute()
        if dead:
            self.dead_lettered += len(dead)
            DEAD_LETTERS.labels(group=self.group).inc(len(dead))
        for stream_id, _payload, reason, deliveries in dead:
            log.error("entry moved to dead-letter stream", group=self.group, stream_id=stream_id, deliveries=deliveries, error=reason)


def _unparsed_reads(client: redis.Redis) -> redis.Redis:
    """Return a client on ``client``'s connection pool whose XREADGROUP returns Redis's reply as it came.

    The callback is changed on this second client only, so the caller's client still parses XREADGROUP.
    """
    unparsed = redis.Redis(connection_pool=client.connection_pool)
    unparsed.set_response_callback("XREADGROUP", lambda reply, **_options: reply)
    return unparsed


def _event_fields(fields: list | dict) -> tuple[Any, Any]:
    """Return the ``event`` and ``group`` values of an entry's fields (a flat field-value list or a dict), None where absent."""
    if isinstance(fields, dict):
        return fields.get(EVENT_FIELD), fields.get(TARGET_GROUP_FIELD)
    # Ingest writes the event field alone; only a replayed dead letter carries more.
    if len(fields) == 2 and fields[0] == EVENT_FIELD:
        return fields[1], None
    found = dict(zip(fields[::2], fields[1::2], strict=True))
    return found.get(EVENT_FIELD), found.get(TARGET_GROUP_FIELD)


def _times_delivered(xpending_reply: list) -> int:
    return int(xpending_reply[0]["times_delivered"]) if xpending_reply else 0


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "handler timed out"
    return f"{type(error).__name__}: {error}"


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
