"""Hostile WebSocket clients get a clear error or close code; the gateway and other clients carry on."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.gateway.protocol import CloseCode
from shared.settings import Settings
from tests.gateway_harness import WsClient, event, gateway, gateway_stats, post, ranker
from tests.helpers import ingest_client, new_key, wait_for

SECRET = "s" * 40
STORM_CONNECTIONS = 300
STORM_CONCURRENCY = 30


async def closed_code(client: WsClient) -> int:
    """Read until the server closes; return the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_bad_messages_get_named_errors(settings: Settings) -> None:
    """Malformed JSON, unknown types and invalid fields each get their error; the connection stays open."""
    async with gateway(settings) as url, WsClient.connect(url) as client:
        cases = [
            ("{not json", "invalid_json", None),
            ('{"type": "dance"}', "unknown_type", "type 'dance' is unknown; use one of subscribe, unsubscribe, ping"),
            ('{"board": "pushups-weekly"}', "invalid_message", "type: is required; use one of subscribe, unsubscribe, ping"),
            ('[1, 2]', "invalid_message", "the message must be a JSON object with a 'type' field"),
            ('{"type": "subscribe", "board": "pushups-weekly"}', "invalid_message", "id: is required"),
            ('{"type": "subscribe", "id": "a", "board": "pushups-weekly", "top": 1000}', "invalid_message", "top: Expected `int` <= 100"),
            ('{"type": "subscribe", "id": "a", "board": "nope"}', "board_not_found", "board: no board has id 'nope'"),
            ('{"type": "subscribe", "id": "a", "board": "pushups-weekly", "period": "1999-13"}', "invalid_period", None),
            ('{"type": "unsubscribe", "id": "missing"}', "subscription_not_found", "no subscription has id 'missing' on this connection"),
        ]
        for text, code, message in cases:
            await client.connection.send(text)
            error = await client.recv()
            assert error["type"] == "error", text
            assert error["code"] == code, text
            if message is not None:
                assert error["message"] == message, text
        await client.send({"type": "ping", "data": "x1"})
        assert await client.recv() == {"type": "pong", "data": "x1"}
        snapshot = await client.subscribe("ok", top=1)
        assert snapshot["resumed"] is False
        await client.connection.send(json.dumps({"type": "subscribe", "id": "ok", "board": "pushups-weekly"}))
        duplicate = await client.recv()
        assert (duplicate["code"], duplicate["id"]) == ("duplicate_id", "ok")


async def test_binary_frame_closes_with_1003(settings: Settings) -> None:
    """A binary frame gets binary_not_supported and close code 1003."""
    async with gateway(settings) as url, WsClient.connect(url) as client:
        await client.connection.send(b'{"type": "ping"}')
        error = await client.recv()
        assert error["code"] == "binary_not_supported"
        assert await closed_code(client) == CloseCode.UNSUPPORTED_DATA == 1003


async def test_oversize_frame_closes_with_1009(settings: Settings) -> None:
    """A frame beyond max_message_bytes closes the connection with 1009."""
    async with gateway(settings, max_message_bytes=1024) as url, WsClient.connect(url) as client:
        await client.connection.send(json.dumps({"type": "ping", "data": "x" * 2000}))
        assert await closed_code(client) == CloseCode.MESSAGE_TOO_BIG == 1009


async def test_thousands_of_subscriptions_rejected(settings: Settings) -> None:
    """Past the limit each subscribe is rejected, and persisting closes with 1008."""
    # The client keeps sending after the close frame, so the server stops reading and
    # waits close_timeout_s for the closing handshake before dropping the connection.
    async with gateway(settings, max_subscriptions=5, max_invalid_messages=10, close_timeout_s=0.5) as url, WsClient.connect(url) as client:
        for index in range(2000):
            try:
                await client.send({"type": "subscribe", "id": f"s{index}", "board": "pushups-weekly", "top": 1})
            except ConnectionClosed:
                break
        replies = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                replies.append(await client.recv())
        assert [reply["type"] for reply in replies] == ["snapshot"] * 5 + ["error"] * 10
        assert {reply["code"] for reply in replies[5:]} == {"too_many_subscriptions"}
        assert replies[5]["message"] == "a connection may hold at most 5 subscriptions; unsubscribe one first"
        assert closed.value.rcvd.code == CloseCode.POLICY_VIOLATION == 1008


async def test_idle_connection_closes_with_4009(settings: Settings) -> None:
    """A connection with no subscription and no message is closed after the idle timeout."""
    async with gateway(settings, idle_timeout_s=0.3) as url, WsClient.connect(url) as client:
        assert await closed_code(client) == CloseCode.IDLE_TIMEOUT == 4009


async def test_reconnect_storm_leaves_others_served(settings: Settings, redis_client) -> None:
    """Hundreds of quick connects and drops neither stop the gateway nor starve a subscribed client."""
    key = await new_key(settings)
    async with ingest_client(settings) as http, ranker(settings), gateway(settings, max_connections_per_ip=STORM_CONCURRENCY + 1) as url:
        async with WsClient.connect(url) as bystander:
            await bystander.subscribe("top", top=3)
            semaphore = asyncio.Semaphore(STORM_CONCURRENCY)
            rejected = 0
            served = 0

            async def storm_once(index: int) -> None:
                nonlocal rejected, served
                async with semaphore:
                    try:
                        async with websockets.connect(url, open_timeout=10) as connection:
                            served += 1
                            if index % 2:
                                await connection.send('{"type": "subscribe", "id": "x", "board": "pushups-weekly"}')
                            # Drop without a closing handshake half of the time.
                            if index % 3 == 0:
                                connection.transport.abort()
                    except InvalidStatus as error:
                        assert error.response.status_code == 429
                        rejected += 1

            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(storm_once(i) for i in range(STORM_CONNECTIONS))), timeout=60)
            assert time.monotonic() - started < 60
            # Closed connections are counted off when their handler ends, so
            # some reconnects may meet the per-IP limit; none may fail otherwise.
            assert served + rejected == STORM_CONNECTIONS
            assert served >= STORM_CONCURRENCY

            await post(http, key, event("e1", "u1", 10))
            update = (await bystander.recv_until(lambda m: m["type"] == "update"))[-1]
            assert [change["user_id"] for change in update["changes"]] == ["u1"]

        async def drained() -> bool:
            return (await gateway_stats(settings.ws_port))["connections"] == 0

        await wait_for(drained, what="every storm connection to close")


async def test_per_ip_limit_rejects_with_429(settings: Settings) -> None:
    """The connection beyond the per-IP limit is rejected at the handshake with 429."""
    async with gateway(settings, max_connections_per_ip=2) as url, WsClient.connect(url), WsClient.connect(url):
        with pytest.raises(InvalidStatus) as rejected:
            async with websockets.connect(url):
                pass
        assert rejected.value.response.status_code == 429
        assert rejected.value.response.body == b"too many connections from 127.0.0.1; at most 2 are allowed\n"


def token(boards: list[str], expires_in_s: float, secret: str = SECRET) -> str:
    return jwt.encode({"boards": boards, "exp": int(time.time() + expires_in_s)}, secret, algorithm="HS256")


async def test_token_required_and_checked(settings: Settings) -> None:
    """With a secret set, missing, expired, forged and board-limited tokens fail as documented."""
    async with gateway(settings, jwt_secret=SECRET) as url:
        bad_tokens = [
            ({}, "a token is required; send 'Authorization: Bearer <jwt>' or add ?token=<jwt> to the URL\n"),
            ({"additional_headers": {"Authorization": f"Bearer {token(['*'], -10)}"}}, "the token has expired; request a new one\n"),
            (
                {"additional_headers": {"Authorization": f"Bearer {token(['*'], 60, secret='x' * 40)}"}},
                "the token is invalid: its signature, algorithm (HS256 expected) or format is wrong\n",
            ),
            (
                {"additional_headers": {"Authorization": "Bearer " + jwt.encode({"boards": ["*"]}, SECRET, algorithm="HS256")}},
                "the token has no 'exp' claim; tokens must expire\n",
            ),
        ]
        for options, body in bad_tokens:
            with pytest.raises(InvalidStatus) as rejected:
                async with websockets.connect(url, **options):
                    pass
            assert rejected.value.response.status_code == 401
            assert rejected.value.response.body.decode() == body

        # A token in the query string, allowed one board only.
        async with WsClient.connect(f"{url}?token={token(['pushups-weekly'], 60)}") as client:
            await client.subscribe("ok")
            await client.send({"type": "subscribe", "id": "other", "board": "run-longest"})
            error = await client.recv()
            assert (error["code"], error["id"]) == ("forbidden", "other")
            assert error["message"] == "board: the token does not allow board 'run-longest'"

        # A token that expires while connected closes the connection with 4001.
        async with WsClient.connect(url, additional_headers={"Authorization": f"Bearer {token(['*'], 1.5)}"}) as client:
            await client.subscribe("ok")
            assert await closed_code(client) == CloseCode.TOKEN_EXPIRED == 4001


async def test_origin_allow_list(settings: Settings) -> None:
    """A browser origin off the list gets 403; a listed one and a missing Origin connect."""
    async with gateway(settings, allowed_origins=frozenset({"http://127.0.0.1:8000"})) as url:
        with pytest.raises(InvalidStatus) as rejected:
            async with websockets.connect(url, origin="http://evil.example"):
                pass
        assert rejected.value.response.status_code == 403
        async with WsClient.connect(url, origin="http://127.0.0.1:8000") as client:
            assert client.welcome["type"] == "welcome"
        async with WsClient.connect(url) as client:
            assert client.welcome["type"] == "welcome"
