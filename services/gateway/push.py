"""Fan-out: at most one push per subscription per interval, encoded once per view, never waiting on a client.

Each push renders every behind view of a board period from the current state in
Redis (latest state wins) and writes it to every subscriber whose send buffer is
below the high-water mark, without awaiting any of them. A subscriber above the
mark is skipped, so it keeps its older ``seq`` and gets everything it missed in one
message once it catches up (conflated harder than the others). One that stays above
the mark for ``slow_close_after_s`` is closed with code 4008.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.server import broadcast

from services.gateway import messages
from services.gateway.clients import Client
from services.gateway.config import GatewayConfig
from services.gateway.history import BoardPeriod, History
from services.gateway.observe import count_broadcast
from services.gateway.hub import Hub, Subscription, View, ViewState
from services.gateway.overtakes import Overtakes, compare, find_overtakes
from services.gateway.protocol import CloseCode
from services.gateway.render import Rendered, Renderer
from shared.boards import Board
from shared.metrics import WEBSOCKET_MESSAGES_CONFLATED, WEBSOCKET_SLOW_CLIENTS_CLOSED

log = structlog.get_logger(__name__)


class Stats:
    """Counters of one gateway process, served at ``/v1/gateway/stats``."""

    def __init__(self) -> None:
        self.messages_sent = 0
        self.slow_closed = 0
        self.max_buffered_bytes = 0
        self.pushes = 0


class Pusher:
    """Owns the push loop; call :meth:`mark` when a board period changed."""

    def __init__(
        self,
        hub: Hub,
        history: History,
        renderer: Renderer,
        boards_by_id: Callable[[str], Board | None],
        config: GatewayConfig,
        stats: Stats,
    ) -> None:
        self.hub = hub
        self.history = history
        self.renderer = renderer
        self.boards_by_id = boards_by_id
        self.config = config
        self.stats = stats
        self.wake = asyncio.Event()
        self.finals: set[BoardPeriod] = set()
        self.slow_clients: set[Client] = set()
        self.closing_tasks: set[asyncio.Task] = set()

    def mark(self, board_period: BoardPeriod, final: bool = False) -> None:
        if final and self.hub.is_followed(board_period):
            self.finals.add(board_period)
        self.hub.mark_dirty(board_period)
        if self.hub.dirty:
            self.wake.set()

    def restart(self, board_period: BoardPeriod) -> None:
        """Give every subscription of ``board_period`` a fresh snapshot at the next push, as its numbering started again.

        A subscription's seq from before the restart can be above the new
        counter, so it is set below every number the history can give changes
        after. The views forget what they showed, so no overtakes are computed
        across the restart.
        """
        for view in self.hub.views_for(board_period):
            self.hub.view_states.pop(view, None)
            for subscription in self.hub.subscriptions_of(view):
                subscription.seq = -1
        self.mark(board_period)

    async def run(self) -> None:
        """Push dirty board periods, no more often than once per flush interval, until cancelled."""
        loop = asyncio.get_running_loop()
        last_push = -float("inf")
        try:
            while True:
                await self.wake.wait()
                # Pacing, not synchronisation: this is what bounds each
                # subscription to max_updates_per_s.
                delay_s = last_push + self.config.flush_interval_s - loop.time()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                self.wake.clear()
                last_push = loop.time()
                await self.push_all()
                self.close_slow_clients(loop.time())
                if self.hub.dirty:
                    self.wake.set()
        finally:
            for task in list(self.closing_tasks):
                task.cancel()

    async def push_all(self) -> None:
        for board_period in self.hub.take_dirty():
            try:
                await self.push(board_period)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                log.warning("push failed, will retry", board=board_period[0], period=board_period[1], error=str(error))
                self.hub.dirty.add(board_period)
            except Exception:
                # A bug in one board period's push must not stop pushes to every other.
                log.exception("push failed", board=board_period[0], period=board_period[1])

    async def push(self, board_period: BoardPeriod) -> None:
        """Send every behind subscription of one board period what it misses."""
        history = self.history.get(board_period)
        if history is None:
            return
        final = board_period in self.finals
        latest = history.last_seq
        due: dict[View, list[Subscription]] = {}
        for view in self.hub.views_for(board_period):
            subscriptions = [s for s in self.hub.subscriptions_of(view) if s.ready and not s.client.closing and (final or s.seq < latest)]
            if subscriptions:
                due[view] = subscriptions
        if not due:
            self.finals.discard(board_period)
            return
        board = self.boards_by_id(next(iter(due)).board)
        if board is None:
            return
        rendered = await self.renderer.read(board, due)
        self.stats.pushes += 1
        for view, subscriptions in due.items():
            overtakes = await self._overtakes(board, view, rendered[view], latest)
            self._send_view(view, subscriptions, rendered[view], latest, final, overtakes)
        if final:
            self.finals.discard(board_period)

    def _send_view(
        self, view: View, subscriptions: list[Subscription], state: Rendered, latest: int, final: bool, overtakes: Overtakes
    ) -> None:
        history = self.history.get(view.board_period)
        assert history is not None
        view_state = self.hub.view_states.setdefault(view, ViewState())
        top = [(entry.user_id, entry.rank, entry.score) for entry in state.entries]
        top_changed = top != view_state.top
        view_state.top = top
        entries = messages.raw(state.entries)
        standing = messages.raw(state.standing)

        # Subscriptions of one view usually share a seq; each distinct seq gets one body.
        by_seq: dict[int, list[Subscription]] = defaultdict(list)
        for subscription in subscriptions:
            by_seq[subscription.seq].append(subscription)
        for seq, group in by_seq.items():
            changes = history.changes_since(seq)
            common: dict[str, Any] = {"board": view.board, "period": view.period, "group": view.group, "seq": latest}
            if final:
                if changes:
                    # Changes that arrived in the same interval as the closing message go out first.
                    update = {**common, "top_changed": top_changed, "entries": entries, "standing": standing, "changes": changes}
                    self._send_group("update", messages.encode(update), group, latest, view, overtakes)
                    overtakes = Overtakes()
                kind, body = "final", {**common, "entries": entries, "standing": standing}
            elif changes is None:
                kind, body = "snapshot", {**common, "resumed": False, "entries": entries, "standing": standing, "changes": []}
            else:
                kind, body = "update", {**common, "top_changed": top_changed, "entries": entries, "standing": standing, "changes": changes}
            self._send_group(kind, messages.encode(body), group, latest, view, overtakes)

    def _send_group(self, kind: str, body: bytes, group: list[Subscription], latest: int, view: View, overtakes: Overtakes) -> None:
        loop_time = asyncio.get_running_loop().time()
        by_id: dict[str, list[Subscription]] = defaultdict(list)
        for subscription in group:
            by_id[subscription.id].append(subscription)
        overtake_body = None
        if overtakes:
            overtake_body = messages.encode(
                {
                    "board": view.board,
                    "period": view.period,
                    "group": view.group,
                    "seq": latest,
                    "user_id": view.user_id,
                    "old_rank": overtakes.old_rank,
                    "new_rank": overtakes.new_rank,
                    "passed": overtakes.passed,
                    "passed_by": overtakes.passed_by,
                    "more": overtakes.more,
                }
            )
        for subscription_id, subscriptions in by_id.items():
            ready = []
            for subscription in subscriptions:
                client = subscription.client
                buffered = client.buffered_bytes()
                self.stats.max_buffered_bytes = max(self.stats.max_buffered_bytes, buffered)
                if buffered > self.config.high_water_bytes:
                    # Skipped: it stays behind and gets one conflated message later.
                    WEBSOCKET_MESSAGES_CONFLATED.inc()
                    if client.slow_since is None:
                        client.slow_since = loop_time
                        self.slow_clients.add(client)
                    self.hub.dirty.add(view.board_period)
                    continue
                client.slow_since = None
                self.slow_clients.discard(client)
                subscription.seq = latest
                ready.append(client.connection)
            if not ready:
                continue
            count_broadcast(ready)
            broadcast(ready, messages.with_head(kind, subscription_id, body), text=True)
            self.stats.messages_sent += len(ready)
            if overtake_body is not None:
                broadcast(ready, messages.with_head("overtake", subscription_id, overtake_body), text=True)
                self.stats.messages_sent += len(ready)

    async def _overtakes(self, board: Board, view: View, state: Rendered, latest: int) -> Overtakes:
        """Compare the followed athlete with everyone who moved since the view's last push."""
        view_state = self.hub.view_states.setdefault(view, ViewState())
        previous_score, previous_rank, previous_seq = view_state.score, view_state.rank, view_state.seq
        standing = state.standing
        view_state.score = standing.score if standing is not None else None
        view_state.rank = standing.rank if standing is not None else None
        view_state.seq = latest
        if view.user_id is None or standing is None or previous_score is None:
            return Overtakes()
        history = self.history.get(view.board_period)
        changes = history.changes_since(previous_seq) if history is not None else None
        if changes is None:
            return Overtakes()
        moves: list[tuple[str, Any, Any]] = [(change.user_id, change.old_score, change.score) for change in changes]
        found = find_overtakes(board, view.user_id, previous_score, standing.score, moves)
        found.old_rank, found.new_rank = previous_rank, standing.rank
        # Athletes who kept their score but lie between the old and the new score
        # were passed (or passed the followed one) without appearing in the changes.
        changed = {change.user_id for change in changes}
        crossed = await self.renderer.read_passed(board, view, previous_score, standing.score)
        target = found.passed if compare(board, standing.score, previous_score) > 0 else found.passed_by
        for user_id in crossed:
            if user_id != view.user_id and user_id not in changed:
                found.add(target, user_id)
        return found

    def close_slow_clients(self, now: float) -> None:
        """Close every client whose send buffer stayed above the high-water mark for too long."""
        for client in list(self.slow_clients):
            if client.closing or client.slow_since is None:
                self.slow_clients.discard(client)
                continue
            if client.buffered_bytes() <= self.config.high_water_bytes:
                client.slow_since = None
                self.slow_clients.discard(client)
                continue
            if now - client.slow_since < self.config.slow_close_after_s:
                continue
            self.slow_clients.discard(client)
            client.closing = True
            self.stats.slow_closed += 1
            WEBSOCKET_SLOW_CLIENTS_CLOSED.inc()
            log.warning(
                "slow client closed",
                connection_id=client.connection_id,
                buffered_bytes=client.buffered_bytes(),
                slow_s=round(now - client.slow_since, 3),
                code=int(CloseCode.SLOW_CONSUMER),
            )
            task = asyncio.get_running_loop().create_task(self._close(client, CloseCode.SLOW_CONSUMER, "send buffer stayed full; read faster"))
            self.closing_tasks.add(task)
            task.add_done_callback(self.closing_tasks.discard)

    async def _close(self, client: Client, code: CloseCode, reason: str) -> None:
        """Close with ``code``; abort the TCP connection if the client does not read the close frame in time."""
        connection = client.connection
        try:
            async with asyncio.timeout(self.config.close_timeout_s):
                await connection.close(code, reason)
        except TimeoutError:
            log.warning("close timed out, aborting connection", connection_id=client.connection_id, timeout_s=self.config.close_timeout_s)
            if connection.transport is not None:
                connection.transport.abort()
        except Exception as error:  # noqa: BLE001 - a failing close must not stop the push loop
            log.warning("close failed", connection_id=client.connection_id, error=str(error))
            with contextlib.suppress(Exception):
                connection.transport.abort()

