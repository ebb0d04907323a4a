"""Rebuild ranking periods from the events in PostgreSQL while traffic flows.

Steps, per run:

1. Note the newest stream id S0 and wait until the persister group has stored
   every entry up to S0, so PostgreSQL contains every event at or before S0.
   When the stream has no entry, the catch-up starts at the mark that
   :func:`catch_up_mark` returns instead of at the stream's start.
2. Read the events of the chosen boards from PostgreSQL, one athlete after the
   other, fold each athlete's events into the final state the apply script
   would leave (``services.ranker.replay``), and write those states with bulk
   ZADD and HSET commands into aside keys (``Names.board_rebuild``) in the same
   hash tag as the live ones.
3. Swap each built period in with one script (RENAME of every part), so
   readers see either the old or the new standings, never a mix.
4. Apply the events after S0, from the stream and then from PostgreSQL, to the new
   keys through the apply script. The ranker may have applied some of them to
   the old keys before the swap; the aside keys record every replayed event id
   and the apply script records event ids with the scores, so every event
   counts exactly once.

Archived (final) periods are skipped unless one is asked for by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ranker.group_progress import STREAM_START, group_passed, parse_stream_id
from services.ranker.ranker import plan_batch
from services.ranker.replay import ReplayFold, ReplayWrites
from services.ranker.replay_writer import queue_writes
from services.ranker.script import APPLY_SCRIPT, live_keys, rebuild_keys, script_args
from shared.boards import Board, BoardRegistry
from shared.names import PERSISTER_GROUP, Names
from shared.schema import BoardUpdate, StreamEvent, stream_event_decoder
from shared.stream import EVENT_FIELD, Entry

log = structlog.get_logger(__name__)

# Longer than a rebuild of a few million events takes; a ranker killed while
# rebuilding leaves the lock, which then expires so another can try.
REBUILD_LOCK_TTL_S = 600

# Events per apply script call in the catch-up.
BATCH_EVENTS = 500

# The replay reads each athlete's events one after the other, as the fold
# needs them, and each instant as exact microseconds since the epoch (extract
# returns numeric since PostgreSQL 14, so nothing is rounded). Ordering
# by user_id in the column's own collation lets PostgreSQL walk the user_id
# index and send the first rows at once. A database's default collation is
# deterministic, so equal ids still come together. Within an athlete, stream
# order makes the display name of the last event appended win, as the live
# ranker keeps it, even when an earlier workout is posted last.
REPLAY_QUERY = (
    "SELECT event_id, user_id, metric, value,"
    " (extract(epoch FROM occurred_at) * 1000000)::bigint, (extract(epoch FROM received_at) * 1000000)::bigint,"
    " display_name, groups"
    " FROM events WHERE metric = any($1::text[])"
    " ORDER BY user_id, split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint"
)
# Rows the cursor fetches per round trip.
FETCH_ROWS = 5000
# Buffered scores and event ids that make the replay hand a pipeline of writes to Redis.
FLUSH_WRITES = 50_000
PROGRESS_LOG_S = 5.0

# How far back by the Redis clock the catch-up reads when the stream has no entry; see catch_up_mark.
EMPTY_STREAM_LOOKBACK_MS = 60_000

# KEYS: the six live keys then the six aside keys, in script.KEY_PARTS order.
# Renames every built part over the live one, drops live parts the rebuild did
# not produce, and bumps the live sequence number so subscribers read again.
SWAP_SCRIPT = """
local parts = #KEYS / 2
for i = 1, parts do
  local live, aside = KEYS[i], KEYS[parts + i]
  if i ~= 3 then
    if redis.call('EXISTS', aside) == 1 then
      redis.call('RENAME', aside, live)
    else
      redis.call('DEL', live)
    end
  end
end
redis.call('DEL', KEYS[parts + 3])
return redis.call('INCR', KEYS[3])
"""

Progress = Callable[[int, int], None]


class RebuildError(RuntimeError):
    """A rebuild could not start or finish; nothing was swapped for the periods not yet done."""


@dataclass
class RebuildReport:
    events: int = 0
    periods: list[tuple[str, str]] = field(default_factory=list)
    caught_up: int = 0


def _event_of(row: asyncpg.Record) -> StreamEvent:
    return StreamEvent(
        event_id=row["event_id"], user_id=row["user_id"], metric=row["metric"], value=row["value"],
        occurred_at=row["occurred_at"], received_at=row["received_at"], display_name=row["display_name"],
        groups=list(row["groups"]),
    )


class Rebuilder:
    """Recompute sorted sets of chosen boards from PostgreSQL; see the module docstring."""

    def __init__(self, client: redis.Redis, pool: asyncpg.Pool, names: Names, boards: BoardRegistry, *, persist_wait_s: float = 60.0) -> None:
        self.client = client
        self.pool = pool
        self.names = names
        self.boards = boards
        self.persist_wait_s = persist_wait_s
        self.apply_script = client.register_script(APPLY_SCRIPT)
        self.swap_script = client.register_script(SWAP_SCRIPT)

    async def rebuild(self, board_ids: Sequence[str] | None = None, period: str | None = None, progress: Progress | None = None) -> RebuildReport:
        """Rebuild ``board_ids`` (default: all), optionally only ``period``; raise RebuildError on a bad request or timeout."""
        boards = self._chosen(board_ids)
        report = RebuildReport()
        started_s = time.monotonic()

        # Step 1: PostgreSQL must hold every event up to the start mark.
        start_mark, catch_up_mark = await self._marks()
        await self._wait_persisted(start_mark)
        await self._restore_hidden()
        hidden = sorted(member.decode() for member in await self.client.smembers(self.names.hidden_users))
        skipped = await self._archived_periods(boards, period)

        # Step 2: fold the events into final states and write them to the aside keys.
        metrics = sorted({board.metric for board in boards})
        total = await self.pool.fetchval("SELECT count(*) FROM events WHERE metric = any($1::text[])", metrics)
        log.info("rebuild started", boards=[board.id for board in boards], period=period, events=total, start_mark=start_mark, catch_up_mark=catch_up_mark)
        fold = ReplayFold(boards, period=period, skipped=frozenset(skipped))
        report.events = await self._replay(fold, metrics, total, progress)
        log.info(
            "rebuild replayed", events=report.events, periods=len(fold.built), late_events=fold.late_events,
            rejected_values=fold.rejected_values, seconds=round(time.monotonic() - started_s, 2),
        )

        # Step 3: swap every built period in at once per period.
        for (ranking, period_id), target in fold.built.items():
            seq = await self.swap_script(keys=[*live_keys(self.names, ranking, period_id), *rebuild_keys(self.names, ranking, period_id)])
            update = BoardUpdate(board=target.board.id, period=period_id, seq=int(seq), changes=[], group=target.group)
            await self.client.publish(self.names.rank_changes_channel, msgspec.json.encode(update))
            report.periods.append((ranking, period_id))

        # Step 4: apply what arrived since the start mark.
        report.caught_up = await self._catch_up(catch_up_mark, boards, hidden)
        log.info(
            "rebuild finished", boards=[b.id for b in boards], events=report.events, periods=len(report.periods),
            caught_up=report.caught_up, seconds=round(time.monotonic() - started_s, 2),
        )
        return report

    def _chosen(self, board_ids: Sequence[str] | None) -> list[Board]:
        if not board_ids:
            return list(self.boards)
        unknown = [board_id for board_id in board_ids if board_id not in self.boards.by_id]
        if unknown:
            raise RebuildError(f"no board has id {', '.join(map(repr, unknown))}; 'rankstream boards list' shows them")
        return [self.boards.by_id[board_id] for board_id in board_ids]

    async def _wait_persisted(self, mark: str) -> None:
        deadline = time.monotonic() + self.persist_wait_s
        while not await group_passed(self.client, self.names, PERSISTER_GROUP, mark):
            if time.monotonic() >= deadline:
                raise RebuildError(
                    f"the persister has not stored the stream up to {mark} within {self.persist_wait_s:.0f} s; start a persister and retry"
                )
            await asyncio.sleep(0.1)

    async def _restore_hidden(self) -> None:
        """Copy the hidden athletes from PostgreSQL into Redis, which may have lost them."""
        users = [row["user_id"] for row in await self.pool.fetch("SELECT DISTINCT user_id FROM hidden_athletes")]
        if users:
            await self.client.sadd(self.names.hidden_users, *users)

    async def _archived_periods(self, boards: list[Board], period: str | None) -> set[tuple[str, str, str]]:
        if period is not None:
            return set()
        rows = await self.pool.fetch(
            "SELECT board_id, group_key, period FROM board_periods WHERE board_id = any($1::text[])", [b.id for b in boards]
        )
        return {(row["board_id"], row["group_key"], row["period"]) for row in rows}

    async def _replay(self, fold: ReplayFold, metrics: list[str], total: int, progress: Progress | None) -> int:
        """Fold every event of ``metrics`` and write the results to the aside keys; return how many events were read.

        One pipeline of writes is in flight while the next rows are read and
        folded, so PostgreSQL, this process and Redis work at the same time.
        """
        # Applied ids expire by real elapsed time, so this is the system clock.
        now_ms = int(time.time() * 1000)
        events = 0
        writing: asyncio.Task[None] | None = None
        logged_s = time.monotonic()
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                async for row in connection.cursor(REPLAY_QUERY, metrics, prefetch=FETCH_ROWS):
                    fold.add(*row)
                    events += 1
                    if fold.buffered < FLUSH_WRITES:
                        continue
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write(fold.take(), now_ms))
                    if progress is not None:
                        progress(events, total)
                    if time.monotonic() - logged_s >= PROGRESS_LOG_S:
                        logged_s = time.monotonic()
                        log.info("rebuild progress", events=events, total=total)
            if writing is not None:
                await writing
            writing = None
            await self._write(fold.finish(), now_ms)
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writing
        if progress is not None:
            progress(events, total)
        return events

    async def _write(self, writes: ReplayWrites, now_ms: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            queue_writes(pipe, self.names, writes, now_ms)
            await pipe.execute()

    async def _marks(self) -> tuple[str, str]:
        """Return the stream id the persister must pass before the replay, and the id the catch-up starts after.

        Both come from one XINFO STREAM reply, so no entry can be appended
        between seeing the stream empty and reading its last generated id. The
        server time is read first, so every entry appended later has a higher id.
        """
        server_s, server_us = await self.client.time()
        server_ms = server_s * 1000 + server_us // 1000
        try:
            info = await self.client.xinfo_stream(self.names.events_stream)
        except ResponseError:
            # No such key: Redis lost the stream, or nothing was ever appended.
            return STREAM_START, catch_up_mark(None, server_ms)
        if info["last-entry"] is None:
            return STREAM_START, catch_up_mark(_text(info["last-generated-id"]), server_ms)
        newest = _text(info["last-entry"][0])
        return newest, newest

    async def _catch_up(self, start_mark: str, boards: list[Board], hidden: list[str]) -> int:
        """Apply every event after ``start_mark`` to the live keys; return how many entries were read.

        The consumers trim the stream below what both groups acknowledged, so an
        entry after the mark is either still in the stream or already in
        PostgreSQL. Both are read, the stream first: an entry trimmed before
        XRANGE reached it was stored before the PostgreSQL query starts. Read the
        other way round, an entry stored after the query started and trimmed
        before XRANGE would be missed. The apply script drops the repeats.
        """
        registry = BoardRegistry(boards)
        applied = 0
        start = f"({start_mark}"
        while raw := await self.client.xrange(self.names.events_stream, min=start, max="+", count=BATCH_EVENTS):
            entries = []
            for entry_id, fields in raw:
                try:
                    entries.append(Entry(_text(entry_id), stream_event_decoder.decode(fields[EVENT_FIELD])))
                except (msgspec.DecodeError, KeyError, TypeError):
                    continue  # The consumers dead-letter such entries; they carry no event.
            applied += await self._apply_live(entries, registry, hidden)
            start = f"({_text(raw[-1][0])}"
        milliseconds, sequence = parse_stream_id(start_mark)
        async with self.pool.acquire() as connection, connection.transaction():
            cursor = await connection.cursor(
                "SELECT event_id, user_id, metric, value, occurred_at, received_at, display_name, groups FROM events"
                " WHERE metric = any($1::text[])"
                " AND (split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint) > ($2::bigint, $3::bigint)",
                sorted({board.metric for board in boards}), milliseconds, sequence,
            )
            while rows := await cursor.fetch(FETCH_ROWS):
                applied += await self._apply_live([Entry(stream_id="0-0", event=_event_of(row)) for row in rows], registry, hidden)
        return applied

    async def _apply_live(self, entries: list[Entry], registry: BoardRegistry, hidden: list[str]) -> int:
        for offset in range(0, len(entries), BATCH_EVENTS):
            plan = plan_batch(registry, entries[offset : offset + BATCH_EVENTS])
            now_ms = int(time.time() * 1000)
            async with self.client.pipeline(transaction=False) as pipe:
                for batch in plan.values():
                    keys = live_keys(self.names, batch.ranking, batch.period)
                    await self.apply_script(keys=keys, args=script_args(batch.board, now_ms, hidden, batch.args), client=pipe)
                await pipe.execute()
        return len(entries)


def catch_up_mark(last_generated_id: str | None, server_ms: int) -> str:
    """Return the stream id after which the catch-up applies events, when the stream has no entry.

    Every entry up to the stream's last generated id was acknowledged by the
    persister before it was trimmed, so the replay reads it from PostgreSQL. An
    entry appended later gets a higher id, taken from the server clock (XADD
    with ``*``), so the mark is the larger of the last generated id and the
    server time less EMPTY_STREAM_LOOKBACK_MS. The lookback covers rows that a
    persister still writes from a stream Redis lost (``last_generated_id`` is
    None when the stream is missing) and a small step back of the clock.
    Without it, a lost stream made the catch-up apply every event in
    PostgreSQL a second time.
    """
    lookback = (max(0, server_ms - EMPTY_STREAM_LOOKBACK_MS), 0)
    if last_generated_id is None:
        return f"{lookback[0]}-{lookback[1]}"
    last = parse_stream_id(last_generated_id)
    return last_generated_id if last >= lookback else f"{lookback[0]}-{lookback[1]}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def needs_rebuild(client: redis.Redis, pool: asyncpg.Pool, names: Names) -> bool:
    """Return whether Redis lost its boards: no ``boards_built`` marker while PostgreSQL contains events.

    The marker is written once the boards hold every persisted event (after a
    rebuild, or at the first start while PostgreSQL is still empty), so it is
    gone exactly when Redis restarted without its data or the keys were flushed.
    """
    if await client.exists(names.boards_built):
        return False
    if await pool.fetchval("SELECT EXISTS (SELECT 1 FROM events)"):
        return True
    await client.set(names.boards_built, "1")
    return False


async def rebuild_if_lost(client: redis.Redis, pool: asyncpg.Pool, names: Names, boards: BoardRegistry, owner: str) -> bool:
    """Rebuild every board when Redis lost its data; return whether this call rebuilt.

    A lock key lets one ranker of the group rebuild while the others go on
    consuming; they skip the rebuild and check again later.
    """
    if not await needs_rebuild(client, pool, names):
        return False
    if not await client.set(names.rebuild_lock, owner, nx=True, ex=REBUILD_LOCK_TTL_S):
        return False
    try:
        log.warning("redis lost its boards while postgresql has events, rebuilding", owner=owner)
        report = await Rebuilder(client, pool, names, boards).rebuild()
        await client.set(names.boards_built, "1")
        log.info("automatic rebuild finished", events=report.events, periods=len(report.periods))
    finally:
        await client.delete(names.rebuild_lock)
    return True


async def watch_for_lost_boards(
    client: redis.Redis, pool: asyncpg.Pool, names: Names, boards: BoardRegistry, owner: str, *, interval_s: float = 5.0
) -> None:
    """Check every ``interval_s`` whether Redis lost its boards while the ranker runs, and rebuild them."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await rebuild_if_lost(client, pool, names, boards, owner)
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncpg.PostgresError) as error:
            log.warning("lost-boards check failed, will retry", error=str(error), interval_s=interval_s)
