"""read_user against standings computed by sorting in Python, over random boards with ties and hidden athletes."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
import redis.asyncio as redis

from shared.boards import Board, Operator, Tie
from shared.names import Names
from shared.settings import Settings
from shared.standings import percentile_rank, read_user
from tests.test_ranker import WHEN, entry, make_ranker

CASES = 12


def expected_order(scores: dict[str, int], reached: dict[str, int], tie: Tie) -> list[str]:
    """Return the visible athletes in list order: score descending, then as the tie policy orders equal scores."""
    if tie is Tie.FIRST:
        return sorted(scores, key=lambda user: (-scores[user], reached[user], user))
    # Redis lists equal scores of a reversed range in descending byte order of the member.
    return sorted(scores, key=lambda user: (scores[user], user.encode()), reverse=True)


def expected_rank(order: list[str], scores: dict[str, int], user: str, tie: Tie) -> int:
    if tie is Tie.FIRST:
        return order.index(user) + 1
    return 1 + sum(1 for other in order if scores[other] > scores[user])


@pytest.mark.parametrize("tie", [Tie.SHARED, Tie.FIRST])
async def test_read_user_matches_sorted_reference(redis_client: redis.Redis, settings: Settings, tie: Tie) -> None:
    """Every athlete's rank, percentile and neighbours match a plain sort, whatever is hidden and however wide the window."""
    names = Names(settings.namespace)
    rng = random.Random(20261205)
    for case in range(CASES):
        board = Board(id=f"ref-{tie.value}-{case}", metric="m", operator=Operator.SUM, tie=tie)
        athletes = [f"u{number:02d}" for number in range(rng.randint(1, 9))]
        # Few distinct scores, so ties are common. Each athlete has one event
        # at its own instant, which is when it reached its score for tie policy first.
        scores = {user: rng.choice([10, 20, 30]) for user in athletes}
        reached = {user: rng.randrange(1000) * 1000 + index for index, user in enumerate(athletes)}
        entries = [entry(index, user, scores[user], occurred_at=WHEN - timedelta(milliseconds=reached[user])) for index, user in enumerate(athletes)]
        # An earlier occurred_at means reached first, so order by the negated offset.
        reached = {user: -offset for user, offset in reached.items()}
        await make_ranker(redis_client, settings, board).handle(entries)

        hidden = {user for user in athletes if rng.random() < 0.3}
        await redis_client.delete(names.hidden_users)
        if hidden:
            await redis_client.sadd(names.hidden_users, *hidden)
        visible = {user: score for user, score in scores.items() if user not in hidden}
        order = expected_order(visible, reached, tie)

        for user in athletes:
            for around in (0, 1, 2, 4):
                found = await read_user(redis_client, names, board, "all", user, around)
                context = f"case {case}, scores {scores}, hidden {sorted(hidden)}, user {user}, around {around}"
                if user in hidden:
                    assert found is None, context
                    continue
                assert found is not None, context
                rank = expected_rank(order, visible, user, tie)
                tied = 1 if tie is Tie.FIRST else sum(1 for other in order if visible[other] == visible[user])
                position = order.index(user)
                window = order[max(0, position - around) : position + around + 1]
                assert found.rank == rank, context
                assert found.score == scores[user], context
                assert found.participants == len(order), context
                assert found.percentile == percentile_rank(len(order), rank, tied), context
                assert [(standing.user_id, standing.rank, standing.score) for standing in found.neighbours] == [
                    (other, expected_rank(order, visible, other, tie), visible[other]) for other in window if other != user
                ], context

        assert await read_user(redis_client, names, board, "all", "absent", 2) is None
    await redis_client.delete(names.hidden_users)
