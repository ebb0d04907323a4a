"""Script calls from concurrent requests, sent to Redis together as one pipeline.

Each Redis call through redis-py costs a connection checkout, a write and a
timeout around the read, and with one call per request that cost bounded the
ingest process. A :class:`CommandBatcher` queues the calls that arrive while
its pipelines are in flight (one by default) and sends them all in the next
one, so under load one round trip serves many requests. A call that arrives
when a pipeline could leave goes out on the next turn of the event loop, so a
lone request waits for nothing but its own round trip.

With ``wait_aof_timeout_ms`` set, each pipeline ends with ``WAITAOF 1 0``, and
every call in it learns whether its writes reached the append-only file.
WAITAOF covers the writes made on its own connection, and a pipeline uses one
connection, so one wait confirms every call of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.raw_commands import exchange

log = structlog.get_logger(__name__)

# The maximum number of calls in one pipeline, which bounds how many requests
# wait on one round trip. A batch of single-event appends takes about a
# millisecond in Valkey, but one of requests with 1,000 events each takes far longer.
MAX_BATCH_CALLS = 256


@dataclass(frozen=True, slots=True)
class Reply:
    """The reply of one script call, or the error Redis returned for it.

    ``on_disk`` is the number of append-only files that confirmed the batch's
    writes (0 or 1), or the error that WAITAOF returned. It is None when the
    batcher does not wait for the disk.
    """

    value: Any
    on_disk: int | Exception | None = None


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]
    future: asyncio.Future[Reply]


class CommandBatcher:
    """A queue of script calls, sent as pipelines in the order they were made.

    Up to ``max_in_flight`` pipelines are in flight at once, each on its own
    connection, so calls queue up for the next one while the others wait for
    their replies (or for the disk). Two pipelines in flight may run in either
    order on the server.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        wait_aof_timeout_ms: int | None = None,
        max_batch_calls: int = MAX_BATCH_CALLS,
        max_in_flight: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.client = client
        self.wait_aof_timeout_ms = wait_aof_timeout_ms
        self.max_batch_calls = max_batch_calls
        self.max_in_flight = max_in_flight
        self._queue: list[_Call] = []
        self._senders: set[asyncio.Task[None]] = set()
        self.pipelines_sent = 0
        self.calls_sent = 0

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Reply:
        """Run ``script`` with ``keys`` and ``args`` in the next pipeline and return its reply.

        A Redis error of this call alone comes back in :attr:`Reply.value`, and a
        failed pipeline (connection lost, timed out) raises its error in every
        call it carried. A cancelled caller does not withdraw its call, so, as
        with any Redis command, the script may still run.
        """
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(script, keys, args, future))
        if len(self._senders) < self.max_in_flight:
            sender = asyncio.get_running_loop().create_task(self._send_queued())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await future

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch_calls]
                del self._queue[: self.max_batch_calls]
                try:
                    replies = await self._send(batch)
                except Exception as error:  # noqa: BLE001 - every caller of the batch gets the error to handle
                    for call in batch:
                        if not call.future.done():
                            call.future.set_exception(error)
                    continue
                for call, reply in zip(batch, replies, strict=True):
                    if not call.future.done():
                        call.future.set_result(reply)
        finally:
            self._senders.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _send(self, batch: list[_Call]) -> list[Reply]:
        values, on_disk = await self._pipeline(batch)
        missing = [index for index, value in enumerate(values) if isinstance(value, NoScriptError)]
        if missing:
            # The server lost its script cache (a restart or SCRIPT FLUSH). A
            # NOSCRIPT reply means the script did not run, so loading the
            # scripts and sending those calls again runs each one once.
            log.info("scripts not cached on the server, loading them", calls=len(missing))
            for script in {id(batch[index].script): batch[index].script for index in missing}.values():
                script.sha = await self.client.script_load(script.script)
            retried_values, retried_on_disk = await self._pipeline([batch[index] for index in missing])
            for index, value in zip(missing, retried_values, strict=True):
                values[index] = value
            if on_disk is not None:
                on_disk = _weaker(on_disk, retried_on_disk)
        self.pipelines_sent += 1
        self.calls_sent += len(batch)
        return [Reply(value, on_disk) for value in values]

    async def _pipeline(self, batch: list[_Call]) -> tuple[list[Any], int | Exception | None]:
        commands: list[tuple[Any, ...]] = [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in batch]
        if self.wait_aof_timeout_ms is not None:
            commands.append(("WAITAOF", 1, 0, self.wait_aof_timeout_ms))
        # One connection for the whole exchange. Leaner than redis-py's
        # Pipeline, whose work per command (callbacks, timeouts, bookkeeping)
        # showed in the profile. Connecting and the health check follow the
        # client's retry policy, but the exchange is not retried. Once the
        # commands are written the server may have run them. A re-sent append
        # would then report its own events as duplicates, and a re-sent
        # rate-limit call would take its tokens twice.
        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.check_health()
            replies = await exchange(connection, commands)
        finally:
            await pool.release(connection)
        if self.wait_aof_timeout_ms is None:
            return replies, None
        waited = replies.pop()
        return replies, waited if isinstance(waited, Exception) else int(waited[0])


def _weaker(first: int | Exception | None, second: int | Exception | None) -> int | Exception | None:
    """Return the confirmation that promises less: an error, then the lower count."""
    if isinstance(first, Exception):
        return first
    if isinstance(second, Exception) or first is None:
        return second
    if second is None:
        return first
    return min(first, second)
