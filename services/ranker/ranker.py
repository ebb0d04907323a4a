"""Map stream entries to ranking periods, apply them with one script call each, publish changes."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime

import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import NoScriptError

from services.ranker.script import APPLY_SCRIPT, PeriodBatch, live_keys, occurred_key, parse_changes, script_args
from shared.boards import BoardError, BoardRegistry, Reset, Scope, ranking_id
from shared.names import Names
from shared.periods import PeriodLookup, closes_at
from shared.schema import StreamEvent
from shared.stream import Entry, HandlerResult

log = structlog.get_logger(__name__)


def groups_of(event: StreamEvent, scope: Scope) -> list[str | None]:
    """Return the rankings an event feeds on a board: the global one, or one per distinct group."""
    if scope is Scope.GLOBAL:
        return [None]
    return list(dict.fromkeys(event.groups))


def plan_batch(boards: BoardRegistry, entries: Sequence[Entry]) -> dict[tuple[str, str], PeriodBatch]:
    """Group a batch into script arguments per (ranking, period), keeping stream order.

    An event received after its period's late grace ended is left out of that
    board. It still counts on the metric's other boards whose period is open.
    """
    plan: dict[tuple[str, str], PeriodBatch] = {}
    periods = PeriodLookup()
    occurred_keys: dict[datetime, str] = {}
    for entry in entries:
        event = entry.event
        occurred_at = event.occurred_at
        occurred = occurred_keys.get(occurred_at)
        if occurred is None:
            occurred = occurred_keys[occurred_at] = occurred_key(occurred_at)
        for board in boards.for_metric(event.metric):
            try:
                score = board.sort_score(event.value)
            except BoardError as error:
                log.error("event skipped on board", board=board.id, event_id=event.event_id, stream_id=entry.stream_id, error=str(error))
                continue
            period, closing = periods.find(board, occurred_at)
            if closing is not None and event.received_at > closing:
                log.debug("late event skipped on board", board=board.id, event_id=event.event_id, stream_id=entry.stream_id)
                continue
            for group in groups_of(event, board.scope):
                batch = plan.get((ranking_id(board.id, group), period))
                if batch is None:
                    batch = PeriodBatch(board, group, period)
                    plan[(batch.ranking, period)] = batch
                batch.args.extend((event.event_id, event.user_id, str(score), occurred))
    return plan


def closing_member(board_id: str, group: str | None, period: str) -> str:
    return json.dumps([board_id, group, period])


class Ranker:
    """The ranker group's batch handler."""

    def __init__(self, client: redis.Redis, names: Names, boards: BoardRegistry) -> None:
        self.client = client
        self.names = names
        self.boards = boards
        self.apply_script = client.register_script(APPLY_SCRIPT)
        self.events_applied = 0

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Apply a batch to every ranking it feeds, then publish one update per changed ranking period."""
        result = await self.apply(entries)
        if result.publish:
            async with self.client.pipeline(transaction=False) as pipe:
                for channel, message in result.publish:
                    pipe.publish(channel, message)
                await pipe.execute()

    async def apply(self, entries: Sequence[Entry]) -> HandlerResult:
        """Apply a batch to every ranking it feeds; return one update per changed ranking period to publish.

        The stream consumer publishes the updates in the transaction that
        acknowledges the batch. :meth:`handle` publishes them at once.
        """
        plan = plan_batch(self.boards, entries)
        names = self.names
        hidden = sorted(member.decode() for member in await self.client.smembers(names.hidden_users))
        # Applied ids expire by real elapsed time, so this is the system clock.
        now_ms = int(time.time() * 1000)
        batches = list(plan.values())

        # Display names, the closing index and one script call per ranking period, in one round trip.
        replies = await self._write(entries, batches, hidden, now_ms)
        script_replies = replies[len(replies) - len(batches) :]

        # One update per ranking period whose standings changed.
        publish = []
        for batch, reply in zip(batches, script_replies, strict=True):
            update = parse_changes(batch.board, batch.group, batch.period, reply)
            if update is not None:
                publish.append((names.rank_changes_channel, msgspec.json.encode(update)))
        self.events_applied += len(entries)
        log.debug("batch applied", entries=len(entries), board_periods=len(batches), updates=len(publish))
        return HandlerResult(publish=publish)

    async def _write(self, entries: Sequence[Entry], batches: list[PeriodBatch], hidden: list[str], now_ms: int) -> list:
        """Send the batch's writes in one pipeline; return its replies, the script calls' last.

        The script runs by its SHA alone, so a batch costs no SCRIPT EXISTS
        round trip. When Redis does not have the script (a first batch, a
        restart, SCRIPT FLUSH), it is loaded and the whole pipeline sent
        again. Every write in it is idempotent, so the commands that ran the
        first time do no harm.
        """
        display_names = {entry.event.user_id: entry.event.display_name for entry in entries if entry.event.display_name is not None}
        try:
            return await self._send_writes(display_names, batches, hidden, now_ms)
        except NoScriptError:
            log.info("apply script not loaded, loading it", sha=self.apply_script.sha)
            await self.client.script_load(APPLY_SCRIPT)
        return await self._send_writes(display_names, batches, hidden, now_ms)

    async def _send_writes(self, display_names: dict[str, str], batches: list[PeriodBatch], hidden: list[str], now_ms: int) -> list:
        names = self.names
        async with self.client.pipeline(transaction=False) as pipe:
            if display_names:
                pipe.hset(names.display_names, mapping=display_names)
            for batch in batches:
                closing = closes_at(batch.board, batch.period)
                if batch.board.reset is not Reset.NEVER and closing is not None:
                    member = closing_member(batch.board.id, batch.group, batch.period)
                    pipe.zadd(names.closing_periods, {member: int(closing.timestamp() * 1000)})
            for batch in batches:
                keys = live_keys(names, batch.ranking, batch.period)
                pipe.evalsha(self.apply_script.sha, len(keys), *keys, *script_args(batch.board, now_ms, hidden, batch.args))
            return await pipe.execute()
