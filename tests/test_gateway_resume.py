"""Resume after a dropped connection, and fresh snapshots after lost rank-change messages."""

from __future__ import annotations

import msgspec

from services.ranker.script import live_keys
from shared.names import Names
from shared.schema import BoardUpdate, RankChange
from shared.settings import Settings
from tests.gateway_harness import WsClient, event, gateway, gateway_stats, post, ranker, wait_seq
from tests.helpers import ingest_client, new_key, wait_for

BOARD = "pushups-weekly"


def changes_by_user(messages: list[dict]) -> list[tuple[str, int, int, int | None]]:
    return [(c["user_id"], c["score"], c["rank"], c["old_rank"]) for m in messages for c in m.get("changes", [])]


async def test_resume_after_drop_loses_and_repeats_nothing(settings: Settings, redis_client) -> None:
    """A client that reconnects with since gets exactly the changes it missed, then live updates."""
    key = await new_key(settings)
    async with ingest_client(settings) as http, ranker(settings), gateway(settings, history_max_changes=2) as url:
        async with WsClient.connect(url) as first:
            snapshot = await first.subscribe("top", top=5)
            assert (snapshot["seq"], snapshot["resumed"], snapshot["entries"]) == (0, False, [])
            period = snapshot["period"]
            await post(http, key, event("e1", "u1", 10))
            update = (await first.recv_until(lambda m: m["type"] == "update" and m["seq"] == 1))[-1]
            assert changes_by_user([update]) == [("u1", 10, 1, None)]
            assert update["top_changed"] is True
            last_seq = update["seq"]
            # Drop the connection without a closing handshake, as a lost network does.
            first.connection.transport.abort()

        # Two batches while the client is away.
        await post(http, key, event("e2", "u2", 20))
        await wait_seq(redis_client, settings, BOARD, period, 2)
        await post(http, key, event("e3", "u3", 5))
        await wait_seq(redis_client, settings, BOARD, period, 3)

        async with WsClient.connect(url) as second:
            resumed = await second.subscribe("top", top=5, since=last_seq)
            assert resumed["resumed"] is True
            received = [resumed]
            if resumed["seq"] < 3:
                # The gateway had not yet received every update when the client came back.
                received += await second.recv_until(lambda m: m["seq"] == 3)
            assert sorted(changes_by_user(received)) == [("u2", 20, 1, None), ("u3", 5, 3, None)]
            assert [m["type"] for m in received[1:]] == ["update"] * (len(received) - 1)
            assert received[-1]["entries"] == [
                {"rank": 1, "user_id": "u2", "score": 20, "display_name": None},
                {"rank": 2, "user_id": "u1", "score": 10, "display_name": None},
                {"rank": 3, "user_id": "u3", "score": 5, "display_name": None},
            ]

            await post(http, key, event("e4", "u1", 30))
            live = (await second.recv_until(lambda m: m["seq"] == 4))[-1]
            assert live["type"] == "update"
            assert changes_by_user([live]) == [("u1", 40, 1, 2)]

            # Only the last two changes are kept, so seq 0 is too old to resume from.
            stale = await second.subscribe("old", top=5, since=0)
            assert (stale["resumed"], stale["seq"], stale["changes"]) == (False, 4, [])
            assert [entry["user_id"] for entry in stale["entries"]] == ["u1", "u2", "u3"]


async def _kill_gateway_pubsub(redis_client, settings: Settings) -> int:
    """Kill the gateway's pub/sub connection on the server; return how many were killed."""
    killed = 0
    for line in (await redis_client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        if fields.get("name", "").startswith(f"{settings.namespace}:gateway:"):
            await redis_client.execute_command("CLIENT", "KILL", "ID", fields["id"])
            killed += 1
    return killed


async def test_gap_after_pubsub_reconnect_sends_fresh_snapshot(settings: Settings, redis_client) -> None:
    """An update lost while pub/sub was down is detected from the counter and re-snapshotted."""
    key = await new_key(settings)
    names = Names(settings.namespace)
    async with ingest_client(settings) as http, ranker(settings), gateway(settings) as url, WsClient.connect(url) as client:
        snapshot = await client.subscribe("top", top=3)
        period = snapshot["period"]
        await post(http, key, event("e1", "u1", 10))
        await client.recv_until(lambda m: m["seq"] == 1)

        # Change the board the way the ranker does but publish nothing, as if the
        # message was published while the gateway's subscription was down.
        await redis_client.zadd(names.board_scores(BOARD, period), {"u9": 99})
        await redis_client.incr(names.board_seq(BOARD, period))
        assert await _kill_gateway_pubsub(redis_client, settings) == 1

        fresh = (await client.recv_until(lambda m: m["type"] == "snapshot"))[-1]
        assert fresh["id"] == "top"
        assert fresh["resumed"] is False
        assert fresh["seq"] == 2
        assert fresh["changes"] == []
        assert [(e["user_id"], e["rank"], e["score"]) for e in fresh["entries"]] == [("u9", 1, 99), ("u1", 2, 10)]
        stats = await gateway_stats(settings.ws_port)
        assert (stats["pubsub_reconnects"], stats["gaps_detected"]) == (1, 1)

        # Live updates continue after the reconnect.
        await post(http, key, event("e2", "u2", 50))
        update = (await client.recv_until(lambda m: m["seq"] == 3))[-1]
        assert update["type"] == "update"
        assert changes_by_user([update]) == [("u2", 50, 2, None)]


async def test_unpublished_update_found_by_counter_check(settings: Settings, redis_client) -> None:
    """An update counted but never published, with no later one, is found by the periodic counter check."""
    key = await new_key(settings)
    names = Names(settings.namespace)
    async with ingest_client(settings) as http, ranker(settings), gateway(settings, loss_check_interval_s=0.2) as url, WsClient.connect(url) as client:
        snapshot = await client.subscribe("top", top=3)
        period = snapshot["period"]
        await post(http, key, event("e1", "u1", 10))
        await client.recv_until(lambda m: m["seq"] == 1)

        # Change the board the way the ranker does and count the update, but
        # publish nothing, as a ranker that died before its publish would.
        await redis_client.zadd(names.board_scores(BOARD, period), {"u9": 99})
        await redis_client.incr(names.board_seq(BOARD, period))

        fresh = (await client.recv_until(lambda m: m["type"] == "snapshot"))[-1]
        assert fresh["id"] == "top"
        assert fresh["resumed"] is False
        assert fresh["seq"] == 2
        assert fresh["changes"] == []
        assert [(e["user_id"], e["rank"], e["score"]) for e in fresh["entries"]] == [("u9", 1, 99), ("u1", 2, 10)]
        stats = await gateway_stats(settings.ws_port)
        assert (stats["losses_detected"], stats["gaps_detected"], stats["pubsub_reconnects"]) == (1, 1, 0)

        # Updates published on time are never taken for lost ones, however many checks run.
        await post(http, key, event("e2", "u2", 50))
        update = (await client.recv_until(lambda m: m["seq"] == 3))[-1]
        assert update["type"] == "update"
        checks = (await gateway_stats(settings.ws_port))["loss_checks"]

        async def two_more_checks() -> bool:
            return (await gateway_stats(settings.ws_port))["loss_checks"] >= checks + 2

        await wait_for(two_more_checks, what="two more loss checks")
        assert (await gateway_stats(settings.ws_port))["losses_detected"] == 1


async def test_counter_reset_resumes_live_updates(settings: Settings, redis_client) -> None:
    """After Redis loses a board period's keys, its updates are numbered from 1 again and still reach subscribers."""
    key = await new_key(settings)
    names = Names(settings.namespace)
    async with ingest_client(settings) as http, ranker(settings), gateway(settings, loss_check_interval_s=0.2) as url, WsClient.connect(url) as client:
        snapshot = await client.subscribe("top", top=3)
        period = snapshot["period"]
        await post(http, key, [event("e1", "u1", 10), event("e2", "u2", 20)])
        await client.recv_until(lambda m: m["seq"] == 1 and len(m["entries"]) == 2)
        await post(http, key, event("e3", "u1", 30))
        await client.recv_until(lambda m: m["seq"] == 2)

        # As after a Redis restart without its data: the board period's keys are gone.
        # A sum board with shared ranks has three of the six keys: scores, applied ids and the counter.
        deleted = await redis_client.delete(*live_keys(names, BOARD, period))
        assert deleted == 3
        fresh = (await client.recv_until(lambda m: m["type"] == "snapshot"))[-1]
        assert (fresh["resumed"], fresh["seq"], fresh["entries"], fresh["changes"]) == (False, 0, [], [])
        assert (await gateway_stats(settings.ws_port))["resets_detected"] == 1

        # The next update is numbered 1, below what the gateway received before, and still pushed.
        await post(http, key, event("e4", "u3", 5))
        first = (await client.recv_until(lambda m: m["seq"] == 1))[-1]
        assert first["type"] == "update"
        assert [(e["user_id"], e["rank"], e["score"]) for e in first["entries"]] == [("u3", 1, 5)]

        # Later updates, numbered 2 and up again, are pushed as updates.
        await post(http, key, event("e5", "u4", 50))
        update = (await client.recv_until(lambda m: m["seq"] == 2))[-1]
        assert update["type"] == "update"
        assert [(e["user_id"], e["rank"], e["score"]) for e in update["entries"]] == [("u4", 1, 50), ("u3", 2, 5)]


async def test_gap_in_published_seq_sends_fresh_snapshot(settings: Settings, redis_client) -> None:
    """A published update that skips a number makes every subscriber re-snapshot."""
    names = Names(settings.namespace)
    async with gateway(settings) as url, WsClient.connect(url) as client:
        snapshot = await client.subscribe("top", top=3)
        period = snapshot["period"]
        scores = names.board_scores(BOARD, period)

        async def publish(seq: int, user: str, score: int, rank: int) -> None:
            await redis_client.zadd(scores, {user: score})
            await redis_client.set(names.board_seq(BOARD, period), seq)
            change = RankChange(user_id=user, score=score, rank=rank, old_score=None, old_rank=None)
            update = BoardUpdate(board=BOARD, period=period, seq=seq, changes=[change])
            await redis_client.publish(names.rank_changes_channel, msgspec.json.encode(update))

        await publish(1, "u1", 10, 1)
        first = await client.recv()
        assert (first["type"], first["seq"], changes_by_user([first])) == ("update", 1, [("u1", 10, 1, None)])
        # Seq 2 is never published.
        await redis_client.zadd(scores, {"u2": 20})
        await publish(3, "u3", 30, 1)
        fresh = await client.recv()
        assert (fresh["type"], fresh["resumed"], fresh["seq"], fresh["changes"]) == ("snapshot", False, 3, [])
        assert [e["user_id"] for e in fresh["entries"]] == ["u3", "u2", "u1"]

        async def gap_counted() -> bool:
            return (await gateway_stats(settings.ws_port))["gaps_detected"] == 1

        await wait_for(gap_counted, what="the gap to be counted")
