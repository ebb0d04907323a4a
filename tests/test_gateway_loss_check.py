"""The gateway listener's periodic loss check, run in this process against the real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis as sync_redis
import redis.asyncio as redis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from services.gateway import listener as listener_module
from services.gateway.history import BoardPeriod, History
from services.gateway.listener import Listener, connect_pubsub_client
from shared.embedded import free_port
from shared.names import Names
from shared.schema import BoardUpdate
from shared.settings import Settings
from tests.helpers import wait_for

BOARD_A: BoardPeriod = ("loss-a", "all")
BOARD_B: BoardPeriod = ("loss-b", "all")


@contextlib.asynccontextmanager
async def running_listener(settings: Settings, client: redis.Redis, interval_s: float) -> AsyncIterator[tuple[Listener, list[BoardPeriod]]]:
    """Run a listener on its own pub/sub connection; yield it and the board periods it reported, in order."""
    changed: list[BoardPeriod] = []
    pubsub_client = connect_pubsub_client(settings.redis_url, f"{settings.namespace}:gateway:test")
    history = History(max_changes=100, max_board_periods=100)
    listener = Listener(
        pubsub_client, client, Names(settings.namespace), history, lambda board_period, _final: changed.append(board_period), loss_check_interval_s=interval_s
    )
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.subscribed.wait(), timeout=10)
        yield listener, changed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub_client.aclose()


async def count_and_publish(client: redis.Redis, names: Names, board_period: BoardPeriod) -> int:
    """Count and publish one update of ``board_period`` as the ranker does; return its seq."""
    seq = await client.incr(names.board_seq(*board_period))
    await publish(client, names, board_period, seq)
    return seq


async def publish(client: redis.Redis, names: Names, board_period: BoardPeriod, seq: int) -> None:
    update = BoardUpdate(board=board_period[0], period=board_period[1], seq=seq, changes=[])
    await client.publish(names.rank_changes_channel, msgspec.json.encode(update))


async def wait_checks(listener: Listener, count: int) -> None:
    """Wait until ``count`` more loss checks have run."""
    target = listener.loss_checks + count

    async def done() -> bool:
        return listener.loss_checks >= target

    await wait_for(done, what=f"{count} more loss checks")


async def test_stalled_listener_not_flagged(settings: Settings, redis_client: redis.Redis) -> None:
    """An update published on time but read late, because the event loop stalled, is not taken for a lost one."""
    names = Names(settings.namespace)
    async with running_listener(settings, redis_client, interval_s=1.0) as (listener, changed):
        await count_and_publish(redis_client, names, BOARD_A)
        await count_and_publish(redis_client, names, BOARD_B)

        async def both_received() -> bool:
            return changed == [BOARD_A, BOARD_B]

        await wait_for(both_received, what="the first update of each board period")

        # Count update 2 of A right after a check, so that exactly one check reads it before it is published.
        await wait_checks(listener, 1)
        seq = await redis_client.incr(names.board_seq(*BOARD_A))
        await wait_checks(listener, 1)
        # Publish with a blocking client and keep the event loop blocked past
        # the next check, as a busy gateway can. Both updates then wait unread
        # in the socket when that check is due.
        with sync_redis.Redis.from_url(settings.redis_url) as blocking:
            seq_b = blocking.incr(names.board_seq(*BOARD_B))
            blocking.publish(names.rank_changes_channel, msgspec.json.encode(BoardUpdate(board=BOARD_B[0], period=BOARD_B[1], seq=seq_b, changes=[])))
            blocking.publish(names.rank_changes_channel, msgspec.json.encode(BoardUpdate(board=BOARD_A[0], period=BOARD_A[1], seq=seq, changes=[])))
            time.sleep(1.5)

        await wait_checks(listener, 2)
        assert listener.losses_detected == 0
        assert listener.history.gaps_detected == 0
        assert listener.history.get(BOARD_A).last_seq == 2
        assert changed == [BOARD_A, BOARD_B, BOARD_B, BOARD_A]


async def test_failed_counter_read_keeps_subscription(settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss check whose counter read fails is skipped and logged, and the working subscription stays."""
    # A module logger used before another test reconfigured structlog keeps
    # the old processors, which capture_logs does not replace. A new one does.
    monkeypatch.setattr(listener_module, "log", structlog.get_logger(listener_module.__name__))
    names = Names(settings.namespace)
    # Nothing listens on this port, so every counter read fails at once.
    unreachable = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), retries=0), socket_connect_timeout=1)
    try:
        with capture_logs() as logs:
            async with running_listener(settings, unreachable, interval_s=0.2) as (listener, changed):
                await count_and_publish(redis_client, names, BOARD_A)

                async def failure_logged() -> bool:
                    return any(entry["event"] in ("loss check failed", "pubsub connection lost, retrying") for entry in logs)

                await wait_for(failure_logged, what="a failed loss check")
                assert listener.reconnects == 0
                assert [entry["event"] for entry in logs if entry["event"] == "pubsub connection lost, retrying"] == []

                # The subscription still delivers updates.
                await count_and_publish(redis_client, names, BOARD_A)

                async def second_received() -> bool:
                    return changed == [BOARD_A, BOARD_A]

                await wait_for(second_received, what="the second update")
                assert listener.losses_detected == 0
    finally:
        await unreachable.aclose()
