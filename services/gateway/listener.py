"""The gateway's one pub/sub subscription to rank changes, with reconnects and gap checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import redis.asyncio as redis
import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.gateway.history import BoardPeriod, History
from shared.boards import ranking_id
from shared.names import Names
from shared.redis_client import KEEPALIVE_OPTIONS
from shared.schema import BoardUpdate, board_update_decoder

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 5.0
# The PING that marks how far a loss check must read the subscription, and how
# long it waits for the reply before treating the connection as lost.
CATCH_UP_PING = b"rankstream-loss-check"
CATCH_UP_TIMEOUT_S = 10.0


def connect_pubsub_client(url: str, client_name: str) -> redis.Redis:
    """Return a client for the subscription that never retries on its own.

    redis-py's retry would reconnect and resubscribe silently, hiding the very
    moment messages may have been lost; the listener reconnects itself instead.
    """
    return redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), retries=0),
        socket_connect_timeout=5,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE_OPTIONS,
        health_check_interval=15,
        client_name=client_name,
        decode_responses=False,
    )


def board_period_of(update: BoardUpdate) -> BoardPeriod:
    return (ranking_id(update.board, update.group), update.period)


class Listener:
    """Feeds every rank-change message into ``history`` and calls ``on_change`` with the board period that moved.

    ``on_change(board_period, final)`` is called for each new update and for each
    gap found; ``final`` is True for the message that closes a period.
    """

    def __init__(
        self,
        pubsub_client: redis.Redis,
        client: redis.Redis,
        names: Names,
        history: History,
        on_change: Callable[[BoardPeriod, bool], None],
        *,
        on_reset: Callable[[BoardPeriod], None] | None = None,
        loss_check_interval_s: float = 5.0,
    ) -> None:
        self.pubsub_client = pubsub_client
        self.client = client
        self.names = names
        self.history = history
        self.on_change = on_change
        self.on_reset = on_reset if on_reset is not None else (lambda board_period: on_change(board_period, False))
        self.loss_check_interval_s = loss_check_interval_s
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self.loss_checks = 0
        self.losses_detected = 0
        self.resets_detected = 0
        # Each known board period's counter as the previous loss check read it.
        self._counters_seen: dict[BoardPeriod, int] = {}

    async def run(self) -> None:
        """Follow the rank-changes channel until cancelled, reconnecting after connection errors."""
        backoff_s = 0.1
        while True:
            pubsub = self.pubsub_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.names.rank_changes_channel)
                if self.subscribed.is_set():
                    self.reconnects += 1
                    await self._check_gaps()
                    log.info("pubsub resubscribed", channel=self.names.rank_changes_channel, reconnects=self.reconnects)
                self.subscribed.set()
                backoff_s = 0.1
                loop = asyncio.get_running_loop()
                next_check = loop.time() + self.loss_check_interval_s
                while True:
                    # Wait no longer than until the next check is due, so checks keep their interval.
                    message = await pubsub.get_message(timeout=min(1.0, max(0.0, next_check - loop.time())))
                    if message is not None and message["type"] == "message":
                        self._receive(message["data"])
                    if loop.time() >= next_check:
                        await self._catch_up(pubsub)
                        await self._check_losses()
                        next_check = loop.time() + self.loss_check_interval_s
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                log.warning("pubsub connection lost, retrying", error=str(error), backoff_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), timeout=5)
                except (RedisConnectionError, OSError, TimeoutError):
                    pass

    def _receive(self, data: bytes) -> None:
        try:
            update = board_update_decoder.decode(data)
        except msgspec.DecodeError as error:
            log.error("invalid rank-change message skipped", error=str(error), size_bytes=len(data))
            return
        board_period = board_period_of(update)
        gap = self.history.add(board_period, update)
        if gap:
            log.warning("rank-change gap detected", board=board_period[0], period=board_period[1], seq=update.seq)
        self.on_change(board_period, update.final)

    async def _check_gaps(self) -> None:
        """Compare each known board period's counter in Redis with the last update received.

        Messages published while the subscription was down are lost for good; a
        counter ahead of the history means some were, so those views re-snapshot.
        """
        for board_period, seq in (await self._read_counters()).items():
            history = self.history.get(board_period)
            if history is not None and seq < history.last_seq:
                self._restart_numbering(board_period, seq, history.last_seq)
            elif self.history.observe(board_period, seq):
                log.warning("rank-change gap detected after reconnect", board=board_period[0], period=board_period[1], seq=seq)
                self.on_change(board_period, False)

    def _restart_numbering(self, board_period: BoardPeriod, seq: int, last_received: int) -> None:
        """Take ``seq``, below the last update received, as the board period's counter from now on.

        The counter went back because Redis lost or removed it, as after a
        restart without its data, so updates are numbered from ``seq`` again.
        Every subscription of the board period gets a fresh snapshot.
        """
        self.history.observe(board_period, seq)
        self.resets_detected += 1
        log.warning("rank-change counter went back, views re-read", board=board_period[0], period=board_period[1], last_received=last_received, seq=seq)
        self.on_reset(board_period)

    async def _catch_up(self, pubsub: PubSub) -> None:
        """Receive every message that Redis published before this call.

        Redis writes the reply to a PING on a subscribed connection into the
        same output buffer as the messages it pushes, so every message
        published before the PING arrives first. That includes the messages
        still unread in the socket after the event loop stalled. A loss check
        made after this takes only an update published later than one check
        interval after it was counted for a lost one.
        """
        await pubsub.ping(CATCH_UP_PING)
        deadline = asyncio.get_running_loop().time() + CATCH_UP_TIMEOUT_S
        while True:
            remaining_s = deadline - asyncio.get_running_loop().time()
            if remaining_s <= 0:
                raise RedisTimeoutError(f"no reply to PING on the pub/sub connection within {CATCH_UP_TIMEOUT_S} s")
            message = await pubsub.get_message(timeout=min(1.0, remaining_s))
            if message is None:
                continue
            if message["type"] == "pong":
                if message["data"] == CATCH_UP_PING:
                    return
            elif message["type"] == "message":
                self._receive(message["data"])

    async def _check_losses(self) -> None:
        """Re-snapshot the board periods whose counter, read one check ago, is still ahead of the updates received.

        A ranker that dies after applying a batch but before publishing it has
        counted an update that is never published. Without this check the views of
        that board period would stay stale until its next update. A counter
        ahead of the history right now is not enough, because its update may
        still be on the way. One interval later it has arrived, or it was lost.
        """
        seen_before = self._counters_seen
        try:
            self._counters_seen = await self._read_counters()
        except (RedisError, OSError) as error:
            # The subscription may be fine, so it stays. The next check compares
            # with the counters read before, which are older but still valid.
            log.warning("loss check failed", error=str(error), board_periods=len(self.history.boards))
            return
        self.loss_checks += 1
        for board_period, seq in self._counters_seen.items():
            history = self.history.get(board_period)
            if history is None:
                continue
            last_received = history.last_seq
            earlier = seen_before.get(board_period)
            if seq < last_received:
                self._restart_numbering(board_period, seq, last_received)
            elif earlier is not None and last_received < earlier and self.history.observe(board_period, seq):
                self.losses_detected += 1
                log.warning("rank-change update lost, views re-read", board=board_period[0], period=board_period[1], last_received=last_received, seq=seq)
                self.on_change(board_period, False)

    async def _read_counters(self) -> dict[BoardPeriod, int]:
        """Return the update counter in Redis of every board period in the history."""
        board_periods = list(self.history.boards)
        if not board_periods:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for board, period in board_periods:
                pipe.get(self.names.board_seq(board, period))
            counters = await pipe.execute()
        return {board_period: int(counter or 0) for board_period, counter in zip(board_periods, counters, strict=True)}
