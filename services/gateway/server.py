"""The gateway's WebSocket server, pub/sub listener and push loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus

import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.gateway.hub import Hub, PendingChanges, View
from services.gateway.observe import count_broadcast, gateway_probes, probe_response
from services.gateway.protocol import ProtocolError, Subscribe, Unsubscribe, parse_client_message
from shared.boards import BoardRegistry
from shared.metrics import WEBSOCKET_CONNECTIONS
from shared.names import Names
from shared.periods import resolve_period
from shared.schema import board_update_decoder
from shared.standings import read_top, read_user

log = structlog.get_logger(__name__)

WS_PATH = "/v1/ws"
MAX_INVALID_MESSAGES = 10
MAX_SUBSCRIPTIONS_PER_CONNECTION = 50
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008

_encoder = msgspec.json.Encoder()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    """Serve subscriptions from one Redis pub/sub subscription for the whole process."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        boards: BoardRegistry,
        *,
        flush_interval_s: float = 0.1,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.client = client
        self.names = names
        self.boards = boards
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self.hub: Hub[ServerConnection] = Hub()
        self.subscribed = asyncio.Event()
        self.messages_sent = 0
        self.probes = gateway_probes(client, names, self.subscribed)

    # -- HTTP before the upgrade ------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer /metrics, /healthz and /readyz, reject unknown paths, let /v1/ws upgrade."""
        probe = await probe_response(self.probes, connection, request)
        if probe is not None:
            return probe
        if request.path.split("?", 1)[0] != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; connect to {WS_PATH}\n")
        return None

    # -- one connection -------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        structlog.contextvars.clear_contextvars()
        connection_id = uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(connection_id=connection_id)
        log.info("connection opened", remote=str(connection.remote_address))
        WEBSOCKET_CONNECTIONS.inc()
        invalid = 0
        try:
            async for data in connection:
                try:
                    message = parse_client_message(data)
                    await self._serve_message(connection, message)
                except ProtocolError as error:
                    invalid += 1
                    await connection.send(_encoder.encode({"type": "error", "code": error.code, "message": error.message}).decode())
                    if error.code == "binary_not_supported":
                        await connection.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
                        return
                    if invalid >= MAX_INVALID_MESSAGES:
                        await connection.close(CLOSE_POLICY_VIOLATION, "too many invalid messages")
                        return
        except ConnectionClosed:
            pass
        finally:
            self.hub.drop(connection)
            WEBSOCKET_CONNECTIONS.dec()
            log.info("connection closed", code=connection.close_code)

    async def _serve_message(self, connection: ServerConnection, message: Subscribe | Unsubscribe) -> None:
        if isinstance(message, Unsubscribe):
            dropped = self.hub.unsubscribe_board(connection, message.board)
            await connection.send(_encoder.encode({"type": "unsubscribed", "board": message.board, "subscriptions": dropped}).decode())
            return
        board = self.boards.by_id.get(message.board)
        if board is None:
            raise ProtocolError("board_not_found", f"no board has id {message.board!r}")
        try:
            period = resolve_period(board, message.period, self.clock())
        except ValueError as error:
            raise ProtocolError("invalid_period", str(error)) from None
        if len(self.hub.views_of(connection)) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise ProtocolError("too_many_subscriptions", f"a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions")
        # NOTE: a subscription stays on the period it resolved to; after a reset
        # the client subscribes again to follow the new current period.
        view = View(board=board.id, period=period, top=message.top, user_id=message.user, around=message.around)
        # Subscribe before reading, so no update between the read and the
        # subscription is missed; a duplicate push is harmless.
        self.hub.subscribe(connection, view)
        seq = int(await self.client.get(self.names.board_seq(board.id, period)) or 0)
        snapshot = await self._render(view, "snapshot", seq, [])
        await connection.send(_encoder.encode(snapshot).decode())
        log.debug("subscribed", board=board.id, period=period, top=view.top, user_id=view.user_id)

    async def _render(self, view: View, kind: str, seq: int, changes: list) -> dict:
        board = self.boards.by_id[view.board]
        entries = await read_top(self.client, self.names, board, view.period, view.top) if view.top else []
        standing = None
        if view.user_id is not None:
            standing = await read_user(self.client, self.names, board, view.period, view.user_id, view.around)
        return {
            "type": kind,
            "board": view.board,
            "period": view.period,
            "top": view.top,
            "user_id": view.user_id,
            "seq": seq,
            "entries": entries,
            "standing": standing,
            "changes": changes,
        }

    # -- pub/sub and pushes -----------------------------------------------------

    async def listen(self) -> None:
        """Follow the rank-changes channel, resubscribing after connection errors."""
        backoff_s = 0.1
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.names.rank_changes_channel)
                if not self.subscribed.is_set():
                    self.subscribed.set()
                else:
                    # Messages published while we were away are lost: re-read every view.
                    self.hub.mark_all_stale()
                    log.info("pubsub resubscribed", channel=self.names.rank_changes_channel)
                backoff_s = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        self.hub.on_update(board_update_decoder.decode(message["data"]))
                    except msgspec.DecodeError as error:
                        log.error("invalid rank-change message skipped", error=str(error))
            except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as error:
                log.warning("pubsub connection lost, retrying", error=str(error), backoff_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisConnectionError, OSError):
                    pass

    async def push_loop(self) -> None:
        """Every flush interval, render each changed view once and send it to all its subscribers."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            pending = self.hub.take_pending()
            for board_period, changes in pending.items():
                try:
                    await self._push(board_period, changes)
                except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                    log.warning("push failed, will retry", board=board_period[0], period=board_period[1], error=str(error))
                    self.hub.pending.setdefault(board_period, PendingChanges()).add_all(changes)

    async def _push(self, board_period: tuple[str, str], changes: PendingChanges) -> None:
        change_list = list(changes.by_user.values())
        for view in self.hub.views_for(board_period):
            connections = self.hub.connections_by_view.get(view)
            if not connections:
                continue
            message = _encoder.encode(await self._render(view, "update", changes.seq, change_list)).decode()
            count_broadcast(connections)
            broadcast(connections, message)
            self.messages_sent += len(connections)
