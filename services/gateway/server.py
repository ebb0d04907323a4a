"""The gateway's WebSocket endpoint: handshake checks, one task per connection, subscribe and unsubscribe.

Pushes are made by :mod:`services.gateway.push` and rank changes arrive through
:mod:`services.gateway.listener`; this module wires them together.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus

import msgspec
import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.gateway import messages
from services.gateway.access import OPEN_GRANT, AccessError, Grant, check_origin, token_from_request, verify_token
from services.gateway.clients import Client
from services.gateway.config import GatewayConfig
from services.gateway.history import History, plan_resume
from services.gateway.hub import Hub, Subscription, View, ViewState
from services.gateway.listener import Listener
from services.gateway.observe import gateway_probes, probe_response
from services.gateway.protocol import CloseCode, Ping, ProtocolError, Subscribe, Unsubscribe, parse_client_message
from services.gateway.push import Pusher, Stats
from services.gateway.render import Renderer
from shared.boards import Board, BoardRegistry, Scope
from shared.metrics import WEBSOCKET_CONNECTIONS
from shared.names import Names
from shared.periods import resolve_period

log = structlog.get_logger(__name__)

WS_PATH = "/v1/ws"
STATS_PATH = "/v1/gateway/stats"
# Snapshot reads at once; more subscribes wait their turn instead of
# exhausting the Redis connection pool during a reconnect storm.
SNAPSHOT_CONCURRENCY = 32


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    """Serve subscriptions of many connections from one pub/sub subscription for the whole process."""

    def __init__(
        self,
        client: redis.Redis,
        pubsub_client: redis.Redis,
        names: Names,
        boards: BoardRegistry,
        config: GatewayConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.client = client
        self.names = names
        self.boards = boards
        self.config = config
        self.clock = clock
        self.gateway_id = uuid.uuid4().hex[:12]
        self.hub = Hub()
        self.history = History(max_changes=config.history_max_changes, max_board_periods=config.history_max_board_periods)
        self.stats = Stats()
        self.pusher = Pusher(self.hub, self.history, Renderer(client, names), self._board, config, self.stats)
        self.listener = Listener(
            pubsub_client, client, names, self.history, self.pusher.mark, on_reset=self.pusher.restart, loss_check_interval_s=config.loss_check_interval_s
        )
        self.subscribed = self.listener.subscribed
        self.probes = gateway_probes(client, names, self.subscribed)
        self.clients: set[Client] = set()
        self.connections_by_ip: Counter[str] = Counter()
        self.grants: weakref.WeakKeyDictionary[ServerConnection, Grant] = weakref.WeakKeyDictionary()
        self.snapshot_slots = asyncio.Semaphore(SNAPSHOT_CONCURRENCY)

    def _board(self, board_id: str) -> Board | None:
        # Looked up on each push: the registry may be replaced while running.
        return self.boards.by_id.get(board_id)

    # -- HTTP before the upgrade ------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Respond to probe and stats requests, then check path, origin, per-IP limit and token before the upgrade."""
        probe = await probe_response(self.probes, connection, request)
        if probe is not None:
            return probe
        path, _, query = request.path.partition("?")
        if path == STATS_PATH:
            response = connection.respond(HTTPStatus.OK, "")
            response.body = msgspec.json.encode(self.stats_document())
            # respond() already set both headers for its empty body; websockets
            # headers are multi-valued, so assigning again would add a second one.
            del response.headers["Content-Type"]
            del response.headers["Content-Length"]
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(response.body))
            return response
        if path != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; connect to {WS_PATH}\n")
        ip = _ip_of(connection)
        try:
            check_origin(request.headers.get("Origin"), self.config.allowed_origins)
            if self.connections_by_ip[ip] >= self.config.max_connections_per_ip:
                raise AccessError(429, f"too many connections from {ip}; at most {self.config.max_connections_per_ip} are allowed")
            if self.config.jwt_secret is not None:
                self.grants[connection] = verify_token(token_from_request(request.headers.get("Authorization"), query), self.config.jwt_secret)
        except AccessError as error:
            log.info("handshake rejected", status=error.status, reason=error.message, remote=ip)
            return connection.respond(HTTPStatus(error.status), error.message + "\n")
        return None

    def stats_document(self) -> dict:
        return {
            "gateway": self.gateway_id,
            "connections": len(self.clients),
            "subscriptions": sum(len(client.subscriptions) for client in self.clients),
            "messages_sent": self.stats.messages_sent,
            "slow_closed": self.stats.slow_closed,
            "max_buffered_bytes": self.stats.max_buffered_bytes,
            "buffered_bytes": sum(client.buffered_bytes() for client in self.clients),
            "gaps_detected": self.history.gaps_detected,
            "pubsub_reconnects": self.listener.reconnects,
            "loss_checks": self.listener.loss_checks,
            "losses_detected": self.listener.losses_detected,
            "resets_detected": self.listener.resets_detected,
        }

    # -- one connection -------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        """Serve one connection until it closes; its subscriptions end with it."""
        structlog.contextvars.clear_contextvars()
        connection_id = uuid.uuid4().hex[:16]
        structlog.contextvars.bind_contextvars(connection_id=connection_id)
        ip = _ip_of(connection)

        # process_request checked the limit, but handshakes run concurrently.
        if self.connections_by_ip[ip] >= self.config.max_connections_per_ip:
            log.info("connection rejected", reason="too many connections", remote=ip)
            await connection.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections from this address")
            return
        self.connections_by_ip[ip] += 1
        client = Client(connection, connection_id, ip, self.grants.pop(connection, OPEN_GRANT))
        self.clients.add(client)
        WEBSOCKET_CONNECTIONS.inc()
        log.info("connection opened", remote=ip)
        try:
            await connection.send(messages.welcome(self.gateway_id, self.config.max_subscriptions, self.config.max_updates_per_s), text=True)
            await self._serve(client)
        except ConnectionClosed:
            pass
        finally:
            for subscription in client.subscriptions.values():
                self.hub.remove(subscription)
            client.closing = True
            self.clients.discard(client)
            self.connections_by_ip[ip] -= 1
            if self.connections_by_ip[ip] <= 0:
                del self.connections_by_ip[ip]
            WEBSOCKET_CONNECTIONS.dec()
            log.info("connection closed", code=connection.close_code, subscriptions=len(client.subscriptions))

    async def _serve(self, client: Client) -> None:
        connection = client.connection
        invalid = 0
        while True:
            deadline, reason = self._deadline(client)
            try:
                async with asyncio.timeout_at(deadline):
                    data = await connection.recv()
            except TimeoutError:
                code = CloseCode.TOKEN_EXPIRED if reason == "token" else CloseCode.IDLE_TIMEOUT
                text = "the token expired; reconnect with a new one" if reason == "token" else "idle: no subscription and no message"
                log.info("connection timed out", reason=reason, code=int(code))
                await self._close(connection, code, text)
                return
            try:
                await self._dispatch(client, parse_client_message(data))
            except ProtocolError as error:
                # A store outage is the gateway's trouble, not the client's misbehaviour.
                if error.code != "unavailable":
                    invalid += 1
                log.info("invalid client message", code=error.code, invalid=invalid, size_bytes=len(data))
                await connection.send(messages.error(error.code, error.message, error.subscription_id), text=True)
                if error.code == "binary_not_supported":
                    await self._close(connection, CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
                    return
                if invalid >= self.config.max_invalid_messages:
                    await self._close(connection, CloseCode.POLICY_VIOLATION, "too many invalid messages")
                    return

    def _deadline(self, client: Client) -> tuple[float | None, str]:
        """Return the loop time at which to stop waiting for a message, and why."""
        loop_time = asyncio.get_running_loop().time()
        deadline, reason = None, "idle"
        if not client.subscriptions:
            deadline = loop_time + self.config.idle_timeout_s
        expires_at = client.grant.expires_at
        if expires_at is not None:
            token_deadline = loop_time + (expires_at - time.time())
            if deadline is None or token_deadline < deadline:
                deadline, reason = token_deadline, "token"
        return deadline, reason

    async def _close(self, connection: ServerConnection, code: CloseCode, reason: str) -> None:
        try:
            async with asyncio.timeout(self.config.close_timeout_s):
                await connection.close(code, reason)
        except TimeoutError:
            connection.transport.abort()

    async def _dispatch(self, client: Client, message: Subscribe | Unsubscribe | Ping) -> None:
        if isinstance(message, Ping):
            await client.connection.send(messages.pong(message.data), text=True)
        elif isinstance(message, Unsubscribe):
            subscription = client.subscriptions.pop(message.id, None)
            if subscription is None:
                raise ProtocolError("subscription_not_found", f"no subscription has id {message.id!r} on this connection", message.id)
            self.hub.remove(subscription)
            await client.connection.send(messages.unsubscribed(message.id), text=True)
        else:
            await self._subscribe(client, message)

    # -- subscribe --------------------------------------------------------------

    def _view_of(self, client: Client, message: Subscribe) -> tuple[Board, View]:
        """Validate a subscribe request against the boards, the grant and the limits."""
        subscription_id = message.id
        if subscription_id in client.subscriptions:
            raise ProtocolError("duplicate_id", f"subscription id {subscription_id!r} is in use on this connection; unsubscribe it first or pick another id", subscription_id)
        if len(client.subscriptions) >= self.config.max_subscriptions:
            raise ProtocolError("too_many_subscriptions", f"a connection may hold at most {self.config.max_subscriptions} subscriptions; unsubscribe one first", subscription_id)
        board = self.boards.by_id.get(message.board)
        if board is None:
            raise ProtocolError("board_not_found", f"board: no board has id {message.board!r}", subscription_id)
        if not client.grant.allows(board.id):
            raise ProtocolError("forbidden", f"board: the token does not allow board {board.id!r}", subscription_id)
        group_board = getattr(board, "scope", None) is Scope.GROUP
        if message.group is not None and not group_board:
            raise ProtocolError("invalid_message", f"group: board {board.id!r} is not a group board; leave group out", subscription_id)
        if message.group is None and group_board:
            raise ProtocolError("invalid_message", f"group: board {board.id!r} ranks each group separately; name the group", subscription_id)
        try:
            period = resolve_period(board, message.period, self.clock())
        except ValueError as error:
            raise ProtocolError("invalid_period", f"period: {error}", subscription_id) from None
        view = View(board=board.id, period=period, top=message.top, user_id=message.user, around=message.around, group=message.group)
        return board, view

    async def _subscribe(self, client: Client, message: Subscribe) -> None:
        """Register a subscription and send its first snapshot, resumed when ``since`` allows.

        The subscription joins the hub before the reads, so no update published
        during them is missed; it receives pushes only once the snapshot is sent.
        """
        board, view = self._view_of(client, message)
        subscription = Subscription(client=client, id=message.id, view=view)
        client.subscriptions[message.id] = subscription
        self.hub.add(subscription)
        try:
            await self._send_snapshot(board, subscription, message.since)
        except (RedisError, OSError) as error:
            # NOTE: no test makes Redis fail during a snapshot read; this branch is unexercised.
            client.subscriptions.pop(message.id, None)
            self.hub.remove(subscription)
            log.warning("snapshot read failed", subscription_id=message.id, board=view.board, error=str(error))
            raise ProtocolError("unavailable", "the leaderboard store did not respond; subscribe again in a few seconds", message.id) from None
        except BaseException:
            client.subscriptions.pop(message.id, None)
            self.hub.remove(subscription)
            raise
        log.debug("subscribed", subscription_id=message.id, board=view.board, period=view.period, group=view.group, seq=subscription.seq)

    async def _send_snapshot(self, board: Board, subscription: Subscription, since: int | None) -> None:
        view = subscription.view

        # Read the counter before the state, so the state is at least as new as the seq sent.
        async with self.snapshot_slots:
            counter = int(await self.client.get(self.names.board_seq(view.board_key, view.period)) or 0)
            history = self.history.ensure(view.board_period, counter)
            resumed, seq, changes = plan_resume(since, counter, history)
            rendered = (await self.pusher.renderer.read(board, [view]))[view]

        body = {
            "board": view.board,
            "period": view.period,
            "group": view.group,
            "seq": seq,
            "resumed": resumed,
            "entries": rendered.entries,
            "standing": rendered.standing,
            "changes": changes,
        }
        await subscription.client.connection.send(messages.with_head("snapshot", subscription.id, messages.encode(body)), text=True)
        subscription.seq = seq
        subscription.ready = True
        if view not in self.hub.view_states:
            standing = rendered.standing
            self.hub.view_states[view] = ViewState(
                top=[(entry.user_id, entry.rank, entry.score) for entry in rendered.entries],
                score=standing.score if standing is not None else None,
                rank=standing.rank if standing is not None else None,
                seq=seq,
            )
        if history.last_seq > seq:
            self.pusher.mark(view.board_period)


def _ip_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"
