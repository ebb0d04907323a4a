"""Map stream entries to board periods, apply them with one script call each, publish changes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources

import msgspec
import redis.asyncio as redis
import structlog

from shared.boards import Board, BoardError, BoardRegistry
from shared.names import Names
from shared.periods import period_of
from shared.schema import BoardUpdate, RankChange
from shared.stream import Entry

log = structlog.get_logger(__name__)

APPLY_SCRIPT = resources.files("services.ranker").joinpath("apply.lua").read_text(encoding="utf-8")

# Applied event ids are remembered this long, far beyond any redelivery of a
# pending entry (claims happen after seconds; dead-lettering after a few tries).
APPLIED_RETENTION_MS = 7 * 24 * 3600 * 1000


def plan_batch(boards: BoardRegistry, entries: Sequence[Entry]) -> dict[tuple[str, str], list[str]]:
    """Group a batch into script arguments per (board, period), keeping stream order."""
    plan: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        event = entry.event
        occurred_ms = int(event.occurred_at.timestamp() * 1000)
        for board in boards.for_metric(event.metric):
            try:
                score = board.sort_score(event.value)
            except BoardError as error:
                log.error("event skipped on board", board=board.id, event_id=event.event_id, stream_id=entry.stream_id, error=str(error))
                continue
            period = period_of(board, event.occurred_at)
            plan.setdefault((board.id, period), []).extend([event.event_id, event.user_id, str(score), str(occurred_ms)])
    return plan


def parse_changes(board: Board, period: str, reply: list) -> BoardUpdate | None:
    """Turn the apply script's reply into a BoardUpdate, or None when no score changed."""
    if not reply:
        return None
    seq = int(reply[0])
    changes = []
    for i in range(1, len(reply), 5):
        user, old_score, new_score, old_rank, new_rank = reply[i : i + 5]
        changes.append(
            RankChange(
                user_id=user.decode(),
                score=board.display_score(float(new_score)),
                rank=int(new_rank),
                old_score=None if old_score is None else board.display_score(float(old_score)),
                old_rank=None if old_rank is None else int(old_rank),
            )
        )
    return BoardUpdate(board=board.id, period=period, seq=seq, changes=changes)


class Ranker:
    """The ranker group's batch handler."""

    def __init__(self, client: redis.Redis, names: Names, boards: BoardRegistry) -> None:
        self.client = client
        self.names = names
        self.boards = boards
        self.apply_script = client.register_script(APPLY_SCRIPT)
        self.events_applied = 0

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Apply a batch to every board it feeds, then publish one update per changed board period."""
        plan = plan_batch(self.boards, entries)
        now_ms = str(int(time.time() * 1000))
        names = self.names
        keys_order = list(plan)
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                if entry.event.display_name is not None:
                    pipe.hset(names.display_names, entry.event.user_id, entry.event.display_name)
            for board_id, period in keys_order:
                board = self.boards.by_id[board_id]
                keys = [
                    names.board_scores(board_id, period),
                    names.board_applied(board_id, period),
                    names.board_seq(board_id, period),
                    names.board_latest_at(board_id, period),
                ]
                args = [board.operator.value, now_ms, str(APPLIED_RETENTION_MS), *plan[(board_id, period)]]
                await self.apply_script(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        script_replies = replies[len(replies) - len(keys_order) :]
        updates = []
        for (board_id, period), reply in zip(keys_order, script_replies, strict=True):
            update = parse_changes(self.boards.by_id[board_id], period, reply)
            if update is not None:
                updates.append(update)
        if updates:
            async with self.client.pipeline(transaction=False) as pipe:
                for update in updates:
                    pipe.publish(names.rank_changes_channel, msgspec.json.encode(update))
                await pipe.execute()
        self.events_applied += len(entries)
        log.debug("batch applied", entries=len(entries), board_periods=len(keys_order), updates=len(updates))
