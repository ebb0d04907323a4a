"""Two gateway processes share one port and both deliver every update to their own clients."""

from __future__ import annotations

import contextlib
from pathlib import Path

from shared.settings import Settings
import msgspec

from services.gateway.history import merge_changes
from shared.names import Names
from shared.schema import RankChange
from tests.gateway_harness import Published, WsClient, current_week, event, post, ranker
from tests.helpers import ingest_client, new_key, wait_for
from tests.processes import service_processes

MAX_CONNECT_ATTEMPTS = 64
CLIENTS_PER_GATEWAY = 2


async def test_two_gateways_deliver_every_update(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Clients spread over two processes on one port each see all five changes, in order."""
    key = await new_key(settings)
    url = f"ws://127.0.0.1:{settings.ws_port}/v1/ws"
    with service_processes(settings, tmp_path / "logs") as services:
        for name in ("gateway-a", "gateway-b"):
            services.start(name, "gateway", RANKSTREAM_WS_REUSE_PORT="1")
        for name in ("gateway-a", "gateway-b"):

            async def listening(name: str = name) -> bool:
                return '"gateway listening"' in services.log_text(name)

            await wait_for(listening, what=f"{name} to listen")

        async with contextlib.AsyncExitStack() as stack, ingest_client(settings) as http, ranker(settings), Published(settings) as published:
            # The kernel spreads connections over both processes; keep two of each.
            clients_by_gateway: dict[str, list[WsClient]] = {}
            for _attempt in range(MAX_CONNECT_ATTEMPTS):
                client = await stack.enter_async_context(WsClient.connect(url))
                kept = clients_by_gateway.setdefault(client.welcome["gateway"], [])
                if len(kept) < CLIENTS_PER_GATEWAY:
                    kept.append(client)
                if len(clients_by_gateway) == 2 and all(len(kept) == CLIENTS_PER_GATEWAY for kept in clients_by_gateway.values()):
                    break
            assert len(clients_by_gateway) == 2, f"all {MAX_CONNECT_ATTEMPTS} connections reached one process"
            clients = [client for kept in clients_by_gateway.values() for client in kept]
            for client in clients:
                snapshot = await client.subscribe("top", top=10)
                assert snapshot["seq"] == 0

            for number in range(1, 6):
                await post(http, key, event(f"e{number}", f"u{number}", number * 10))
            # The ranker may apply several events in one batch, so read the final seq.
            names = Names(settings.namespace)
            scores = names.board_scores("pushups-weekly", current_week())

            async def all_applied() -> bool:
                return await redis_client.zcard(scores) == 5

            await wait_for(all_applied, what="five athletes on the board")
            final_seq = int(await redis_client.get(names.board_seq("pushups-weekly", current_week())))

            expected = merge_changes([update.changes for update in await published.collect(final_seq)])
            for client in clients:
                received = await client.recv_until(lambda m: m["seq"] == final_seq)
                assert [m["type"] for m in received] == ["update"] * len(received)
                seqs = [m["seq"] for m in received]
                assert seqs == sorted(set(seqs))
                # Merged, the pushed changes equal the merge of everything the ranker published.
                delivered = merge_changes([[msgspec.convert(c, RankChange) for c in m["changes"]] for m in received])
                assert delivered == expected
                assert [e["user_id"] for e in received[-1]["entries"]] == ["u5", "u4", "u3", "u2", "u1"]
        for name in ("gateway-a", "gateway-b"):
            assert services.stop(name) == 0, services.log_text(name)
