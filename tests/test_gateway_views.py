"""What subscriptions show: overtakes of a followed athlete, group boards and a period's final standings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgspec

from shared.boards import ranking_id
from shared.names import Names
from shared.schema import BoardUpdate, RankChange
from shared.settings import Settings
from tests.gateway_harness import WsClient, current_week, event, gateway, post, ranker, wait_seq
from tests.helpers import ingest_client, new_key

GROUP_BOARDS = """
[[board]]
id = "team-pushups"
metric = "pushups"
operator = "sum"
scope = "group"
"""


async def test_overtakes_name_who_passed_whom(settings: Settings, redis_client) -> None:
    """Following u2: passing u1 and being passed by u3 each arrive as an overtake with both ranks."""
    key = await new_key(settings)
    period = current_week()
    async with ingest_client(settings) as http, ranker(settings), gateway(settings) as url, WsClient.connect(url) as client:
        await post(http, key, [event("e1", "u1", 30), event("e2", "u2", 20), event("e0", "u0", 5)])
        await wait_seq(redis_client, settings, "pushups-weekly", period, 1)
        snapshot = await client.subscribe("me", top=0, user="u2", around=1)
        assert snapshot["entries"] == []
        assert (snapshot["standing"]["rank"], snapshot["standing"]["score"]) == (2, 20)
        assert [n["user_id"] for n in snapshot["standing"]["neighbours"]] == ["u1", "u0"]

        # u2 passes u1, who did not move.
        await post(http, key, event("e3", "u2", 15))
        update, overtake = await client.recv_until(lambda m: m["type"] == "overtake")
        assert update["type"] == "update"
        assert (update["standing"]["rank"], update["standing"]["score"]) == (1, 35)
        assert overtake == {
            "type": "overtake", "id": "me", "board": "pushups-weekly", "period": period, "group": None, "seq": 2,
            "user_id": "u2", "old_rank": 2, "new_rank": 1, "passed": ["u1"], "passed_by": [], "more": 0,
        }

        # u3 arrives ahead of u2.
        await post(http, key, event("e4", "u3", 50))
        update, overtake = await client.recv_until(lambda m: m["type"] == "overtake")
        assert update["seq"] == 3
        assert (overtake["old_rank"], overtake["new_rank"], overtake["passed"], overtake["passed_by"]) == (1, 2, [], ["u3"])

        # A move that crosses nobody brings an update and no overtake.
        await post(http, key, event("e5", "u0", 1))
        update = await client.recv()
        assert (update["type"], update["seq"]) == ("update", 4)
        await post(http, key, event("e6", "u3", 1))
        update = await client.recv()
        assert (update["type"], update["seq"]) == ("update", 5)


async def test_group_board_and_final_message(settings: Settings, redis_client, tmp_path: Path) -> None:
    """A group subscription sees only its group's ranking, then the period's final standings."""
    boards_file = tmp_path / "boards.toml"
    boards_file.write_text(GROUP_BOARDS)
    settings = replace(settings, boards_file=boards_file)
    names = Names(settings.namespace)
    ranking = ranking_id("team-pushups", "team-a")
    async with gateway(settings) as url, WsClient.connect(url) as client:
        await client.send({"type": "subscribe", "id": "g", "board": "team-pushups"})
        error = await client.recv()
        assert (error["code"], error["message"]) == ("invalid_message", "group: board 'team-pushups' ranks each group separately; name the group")
        await client.send({"type": "subscribe", "id": "g", "board": "pushups-weekly", "group": "team-a"})
        assert (await client.recv())["code"] == "board_not_found"

        snapshot = await client.subscribe("g", board="team-pushups", group="team-a", top=5)
        assert (snapshot["group"], snapshot["period"], snapshot["seq"]) == ("team-a", "all", 0)

        async def publish(group: str, seq: int, user: str, score: int, final: bool = False) -> None:
            await redis_client.zadd(names.board_scores(ranking_id("team-pushups", group), "all"), {user: score})
            await redis_client.set(names.board_seq(ranking_id("team-pushups", group), "all"), seq)
            changes = [] if final else [RankChange(user_id=user, score=score, rank=1, old_score=None, old_rank=None)]
            update = BoardUpdate(board="team-pushups", period="all", seq=seq, changes=changes, group=group, final=final)
            await redis_client.publish(names.rank_changes_channel, msgspec.json.encode(update))

        # Another group's update is not pushed to this subscription.
        await publish("team-b", 1, "b1", 99)
        await publish("team-a", 1, "a1", 10)
        update = await client.recv()
        assert (update["type"], update["group"], update["seq"]) == ("update", "team-a", 1)
        assert update["entries"] == [{"rank": 1, "user_id": "a1", "score": 10, "display_name": None}]

        # A last change and the closing message in quick succession: the change is
        # delivered, then the final standings.
        await publish("team-a", 2, "a2", 20)
        await publish("team-a", 3, "a2", 20, final=True)
        received = await client.recv_until(lambda m: m["type"] == "final")
        assert [m["type"] for m in received[:-1]] == ["update"] * (len(received) - 1)
        assert [c["user_id"] for m in received[:-1] for c in m["changes"]] == ["a2"]
        assert received[-1] == {
            "type": "final", "id": "g", "board": "team-pushups", "period": "all", "group": "team-a", "seq": 3,
            "entries": [
                {"rank": 1, "user_id": "a2", "score": 20, "display_name": None},
                {"rank": 2, "user_id": "a1", "score": 10, "display_name": None},
            ],
            "standing": None,
        }
        assert await redis_client.get(names.board_seq(ranking, "all")) == b"3"
