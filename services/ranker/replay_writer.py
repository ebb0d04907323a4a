"""Queue the writes of a folded replay (``services.ranker.replay``) on a Redis pipeline.

Each ranking period's final state goes to its aside keys with plain ZADD and
HSET commands of at most ``CHUNK_MEMBERS`` members each, so no single command
blocks the server for long. Keys and values are the ones ``apply.lua`` writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import redis.asyncio as redis

from services.ranker.ranker import closing_member
from services.ranker.replay import PeriodWrites, RankingPeriod, ReplayWrites
from services.ranker.script import rebuild_keys
from shared.boards import Reset
from shared.names import Names
from shared.periods import closes_at

CHUNK_MEMBERS = 5000


def queue_writes(pipe: redis.client.Pipeline, names: Names, writes: ReplayWrites, now_ms: int) -> None:
    """Queue every write of ``writes``; ``now_ms`` is the apply time recorded with each event id."""
    if writes.display_names:
        # NOTE: names go straight into the live hash, so a name the live ranker
        # stored while the rebuild ran can be replaced by an older one until
        # the athlete's next event with a name.
        _queue_pairs(pipe, "HSET", names.display_names, writes.display_names.keys(), writes.display_names.values(), value_first=False)
    for period_writes in writes.periods:
        _queue_period(pipe, names, period_writes, now_ms)


def _queue_period(pipe: redis.client.Pipeline, names: Names, writes: PeriodWrites, now_ms: int) -> None:
    target = writes.target
    scores, applied, _seq, latest_at, reached, order = rebuild_keys(names, target.ranking, target.period)
    if writes.first:
        # Aside keys left by an interrupted rebuild must not leak into this one.
        pipe.delete(*rebuild_keys(names, target.ranking, target.period))
        _queue_closing(pipe, names, target)
    # The same score for every member goes as one bytes object, which the client sends without converting it each time.
    applied_score = str(now_ms).encode()
    _queue_pairs(pipe, "ZADD", scores, writes.scores.keys(), writes.scores.values(), value_first=True)
    _queue_pairs(pipe, "ZADD", applied, writes.applied, [applied_score] * len(writes.applied), value_first=True)
    _queue_pairs(pipe, "HSET", latest_at, writes.latest_at.keys(), writes.latest_at.values(), value_first=False)
    _queue_pairs(pipe, "HSET", reached, writes.reached.keys(), writes.reached.values(), value_first=False)
    _queue_pairs(pipe, "ZADD", order, writes.order, [b"0"] * len(writes.order), value_first=True)


def _queue_closing(pipe: redis.client.Pipeline, names: Names, target: RankingPeriod) -> None:
    """Record when the period closes, as the ranker does for each period it applies events to."""
    closing = closes_at(target.board, target.period)
    if target.board.reset is not Reset.NEVER and closing is not None:
        member = closing_member(target.board.id, target.group, target.period)
        pipe.zadd(names.closing_periods, {member: int(closing.timestamp() * 1000)})


def _queue_pairs(
    pipe: redis.client.Pipeline, command: str, key: str, members: Iterable[str], values: Iterable[object], *, value_first: bool
) -> None:
    """Queue ``command key`` over (member, value) pairs in chunks; ZADD takes the score first, HSET the field first."""
    for member_chunk, value_chunk in zip(_chunks(list(members)), _chunks(list(values)), strict=True):
        arguments: list[object] = [None] * (2 * len(member_chunk))
        if value_first:
            arguments[0::2] = value_chunk
            arguments[1::2] = member_chunk
        else:
            arguments[0::2] = member_chunk
            arguments[1::2] = value_chunk
        pipe.execute_command(command, key, *arguments)


def _chunks(items: Sequence) -> Iterator[Sequence]:
    for start in range(0, len(items), CHUNK_MEMBERS):
        yield items[start : start + CHUNK_MEMBERS]
