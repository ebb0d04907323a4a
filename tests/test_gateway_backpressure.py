"""A client that never reads is conflated, then closed with 4008, while others keep their pace."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from services.gateway.protocol import CloseCode
from shared.settings import Settings
from shared.names import Names
from tests.gateway_harness import WsClient, current_week, event, gateway_stats, post, wait_seq
from tests.helpers import ingest_client, new_key, wait_healthy
from tests.processes import service_processes

HIGH_WATER_BYTES = 64 * 1024
SLOW_SUBSCRIPTIONS = 40
MAX_POSTS = 600
MAX_LOAD_S = 30.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def small_receive_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, so unread data backs up into the gateway quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


@pytest.mark.timeout(120)
async def test_slow_client_closed_others_unaffected(settings: Settings, redis_client, tmp_path: Path) -> None:
    """The never-reading client is closed with 4008; the reading one gets every update promptly; memory stays bounded."""
    key = await new_key(settings)
    url = f"ws://127.0.0.1:{settings.ws_port}/v1/ws"
    env = {
        "RANKSTREAM_WS_HIGH_WATER_BYTES": str(HIGH_WATER_BYTES),
        "RANKSTREAM_WS_SLOW_CLOSE_AFTER_S": "1",
        "RANKSTREAM_WS_CLOSE_TIMEOUT_S": "10",
        "RANKSTREAM_WS_MAX_UPDATES_PER_S": "20",
        "RANKSTREAM_WS_MAX_SUBSCRIPTIONS": str(SLOW_SUBSCRIPTIONS),
    }
    with service_processes(settings, tmp_path / "logs") as services:
        # Separate processes, so the gateway and the ranker do not share the
        # test's event loop with the clients whose pace is measured.
        process = services.start("gateway", "gateway", **env)
        services.start("ranker", "ranker")
        await wait_healthy(f"http://127.0.0.1:{settings.ws_port}/v1/gateway/stats")
        async with ingest_client(settings) as http:
            # A hundred athletes, so each top-100 message is several kilobytes.
            await post(http, key, [event(f"seed{i}", f"u{i:03d}", i + 1) for i in range(100)])
            await wait_seq(redis_client, settings, "pushups-weekly", current_week(), 1)

            async with WsClient.connect(url) as fast, websockets.connect(url, sock=small_receive_socket(settings.ws_port)) as slow:
                for index in range(SLOW_SUBSCRIPTIONS):
                    await slow.send(json.dumps({"type": "subscribe", "id": f"s{index}", "board": "pushups-weekly", "top": 100}))
                snapshot = await fast.subscribe("top", top=10)
                seq = snapshot["seq"]
                assert seq == 1
                rss_before = rss_bytes(process.pid)

                # Post one event at a time until the gateway gives up on the slow client.
                latencies_s = []
                posts = 0
                started = time.monotonic()
                while posts < MAX_POSTS and time.monotonic() - started < MAX_LOAD_S:
                    posts += 1
                    posted_at = time.monotonic()
                    await post(http, key, event(f"load{posts}", f"u{posts % 100:03d}", 10))
                    seq += 1
                    try:
                        await fast.recv_until(lambda m, target=seq: m["seq"] >= target)
                    except AssertionError as error:
                        counter = await redis_client.get(Names(settings.namespace).board_seq("pushups-weekly", current_week()))
                        stats = await gateway_stats(settings.ws_port)
                        raise AssertionError(f"post {posts}: board seq {counter}, gateway {stats}, ranker log {services.log_text('ranker')[-2000:]}") from error
                    latencies_s.append(time.monotonic() - posted_at)
                    if (await gateway_stats(settings.ws_port))["slow_closed"] == 1:
                        break
                stats = await gateway_stats(settings.ws_port)
                assert stats["slow_closed"] == 1, stats
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{settings.ws_port}/metrics") as response:
                    metrics_text = await response.text()
                assert "rankstream_websocket_slow_clients_closed_total 1.0" in metrics_text.splitlines()

                # Reading now drains what was buffered and ends with the close frame.
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(slow.recv(), 10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == CloseCode.SLOW_CONSUMER == 4008

                # The reading client still gets the next update.
                await post(http, key, event("last", "u000", 1500))
                last = (await fast.recv_until(lambda m: m["seq"] == seq + 1))[-1]
                assert [change["user_id"] for change in last["changes"]] == ["u000"]
                assert (last["entries"][0]["user_id"], last["entries"][0]["rank"]) == ("u000", 1)

            # Bounded memory: a skipped client never gets more than one push beyond the mark.
            assert stats["max_buffered_bytes"] < HIGH_WATER_BYTES + SLOW_SUBSCRIPTIONS * 8 * 1024
            assert rss_bytes(process.pid) - rss_before < 64 * 1024 * 1024
            # The reader's delivery time stayed well under a second while the slow client was stuck.
            assert max(latencies_s) < 2.0, sorted(latencies_s)[-5:]
        assert services.stop("gateway") == 0
