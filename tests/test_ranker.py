"""The ranker's apply step against a real Valkey/Redis: operators, ranks, at-most-once effect."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest
import redis.asyncio as redis

from services.ranker.ranker import Ranker
from shared.boards import Board, BoardRegistry, Operator, Order, Reset, Tie
from shared.names import Names
from shared.schema import StreamEvent
from shared.settings import Settings
from shared.standings import read_top, read_top_page, read_user
from shared.stream import Entry

WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def entry(number: int, user: str, value: float, metric: str = "m", occurred_at: datetime = WHEN) -> Entry:
    return Entry(
        stream_id=f"{number}-0",
        event=StreamEvent(
            event_id=f"e{number}", user_id=user, metric=metric, value=value, occurred_at=occurred_at, received_at=WHEN
        ),
    )


def make_ranker(client: redis.Redis, settings: Settings, *boards: Board) -> Ranker:
    return Ranker(client, Names(settings.namespace), BoardRegistry(boards))


async def scores(client: redis.Redis, settings: Settings, board: Board, period: str = "all") -> list[tuple[int, str, float]]:
    return [(s.rank, s.user_id, s.score) for s in await read_top(client, Names(settings.namespace), board, period, 100)]


async def next_message(pubsub: redis.client.PubSub) -> dict | None:
    """Return the next pub/sub message, or None when none arrives within 5 s."""
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None


async def test_sum_adds_values(redis_client: redis.Redis, settings: Settings) -> None:
    """The sum operator adds every event's value."""
    board = Board(id="sum", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 300), entry(2, "a", 200), entry(3, "b", 450)])
    assert await scores(redis_client, settings, board) == [(1, "a", 500), (2, "b", 450)]


async def test_best_higher_keeps_maximum(redis_client: redis.Redis, settings: Settings) -> None:
    """best with higher-is-better keeps the largest single value."""
    board = Board(id="best-hi", metric="m", operator=Operator.BEST, order=Order.HIGHER, decimals=2)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 5000.5), entry(2, "a", 9008.22), entry(3, "a", 7000), entry(4, "b", 9008.23)])
    assert await scores(redis_client, settings, board) == [(1, "b", 9008.23), (2, "a", 9008.22)]


async def test_best_lower_keeps_minimum(redis_client: redis.Redis, settings: Settings) -> None:
    """best with lower-is-better keeps the smallest value and ranks it first."""
    board = Board(id="best-lo", metric="m", operator=Operator.BEST, order=Order.LOWER, decimals=1)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 1500.4), entry(2, "a", 1700), entry(3, "b", 1400.1), entry(4, "b", 1450)])
    assert await scores(redis_client, settings, board) == [(1, "b", 1400.1), (2, "a", 1500.4)]


async def test_latest_keeps_last_by_occurred_at(redis_client: redis.Redis, settings: Settings) -> None:
    """latest keeps the value with the latest occurred_at, whatever the arrival order."""
    board = Board(id="latest", metric="m", operator=Operator.LATEST)
    ranker = make_ranker(redis_client, settings, board)
    later = datetime(2026, 12, 2, 13, 0, tzinfo=timezone.utc)
    await ranker.handle([entry(1, "a", 70, occurred_at=later), entry(2, "a", 80, occurred_at=WHEN)])
    assert await scores(redis_client, settings, board) == [(1, "a", 70)]


async def test_count_counts_events(redis_client: redis.Redis, settings: Settings) -> None:
    """count adds one per event whatever its value."""
    board = Board(id="count", metric="m", operator=Operator.COUNT)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 70), entry(2, "a", 3), entry(3, "b", 1000)])
    assert await scores(redis_client, settings, board) == [(1, "a", 2), (2, "b", 1)]


async def test_redelivered_batch_counts_once(redis_client: redis.Redis, settings: Settings) -> None:
    """Applying the same entries again, as after a crash before the ack, changes nothing."""
    board = Board(id="sum", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 300)])
    await ranker.handle([entry(1, "a", 300), entry(2, "a", 200)])
    assert await scores(redis_client, settings, board) == [(1, "a", 500)]


async def test_ties_share_rank(redis_client: redis.Redis, settings: Settings) -> None:
    """Equal scores share a rank and the next rank skips: 1, 2, 2, 4, 5, 5."""
    board = Board(id="ties", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    values = {"a": 101, "b": 100, "c": 100, "d": 99, "e": 0, "f": 0}
    await ranker.handle([entry(i, user, value) for i, (user, value) in enumerate(values.items())])
    ranks = [(rank, score) for rank, _user, score in await scores(redis_client, settings, board)]
    assert ranks == [(1, 101), (2, 100), (2, 100), (4, 99), (5, 0), (5, 0)]
    names = Names(settings.namespace)
    page = await read_top(redis_client, names, board, "all", 2, offset=2)
    assert [(s.rank, s.score) for s in page] == [(2, 100), (4, 99)]
    mine = await read_user(redis_client, names, board, "all", "c", around=1)
    assert mine is not None
    assert (mine.rank, mine.score, mine.participants) == (2, 100, 6)
    # Within a tie, higher user ids come first, so c (position 1) sits between a and b.
    assert [(s.user_id, s.rank) for s in mine.neighbours] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("tie", [Tie.SHARED, Tie.FIRST])
async def test_neighbours_skip_hidden_athletes(redis_client: redis.Redis, settings: Settings, tie: Tie) -> None:
    """A hidden athlete inside the window of neighbours is left out, and the ranks below it close up."""
    board = Board(id=f"near-{tie.value}", metric="m", operator=Operator.SUM, tie=tie)
    ranker = make_ranker(redis_client, settings, board)
    values = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10}
    await ranker.handle([entry(i, user, value) for i, (user, value) in enumerate(values.items())])
    names = Names(settings.namespace)
    await redis_client.sadd(names.hidden_users, "c")
    mine = await read_user(redis_client, names, board, "all", "d", around=2)
    assert mine is not None
    assert (mine.rank, mine.score, mine.participants) == (3, 20, 4)
    assert [(s.user_id, s.rank, s.score) for s in mine.neighbours] == [("a", 1, 50), ("b", 2, 40), ("e", 4, 10)]
    assert await read_user(redis_client, names, board, "all", "c", around=2) is None
    top = await read_user(redis_client, names, board, "all", "a", around=1)
    assert top is not None
    assert [(s.user_id, s.rank) for s in top.neighbours] == [("b", 2)]


async def test_publishes_rank_changes(redis_client: redis.Redis, settings: Settings) -> None:
    """Each batch publishes one update per board period with old and new rank and score."""
    board = Board(id="pub", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 10)])
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Names(settings.namespace).rank_changes_channel)
    await ranker.handle([entry(2, "b", 15)])
    message = None
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            break
    await pubsub.aclose()
    assert message is not None
    update = msgspec.json.decode(message["data"])
    assert update == {
        "board": "pub",
        "period": "2026-W49",
        "seq": 2,
        "changes": [{"user_id": "b", "score": 15, "rank": 1, "old_score": None, "old_rank": None}],
    }


@pytest.mark.parametrize("value", [2**53 + 2, 1e300])
def test_unrepresentable_value_rejected_by_board(value: float) -> None:
    """A value beyond 2^53 after scaling cannot be ranked exactly and raises."""
    from shared.boards import BoardError

    board = Board(id="x", metric="m", operator=Operator.SUM, decimals=2)
    with pytest.raises(BoardError, match="exceeds 2\\^53"):
        board.sort_score(value)


async def test_failed_apply_records_no_event(redis_client: redis.Redis, settings: Settings) -> None:
    """A script that fails on a wrong-type key writes nothing, so the retried event still counts."""
    from redis.exceptions import ResponseError

    board = Board(id="typed", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    names = Names(settings.namespace)
    await redis_client.set(names.board_scores("typed", "all"), "not a sorted set")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await ranker.handle([entry(1, "a", 300)])
    assert await redis_client.exists(names.board_applied("typed", "all")) == 0
    await redis_client.delete(names.board_scores("typed", "all"))
    await ranker.handle([entry(1, "a", 300)])
    assert await scores(redis_client, settings, board) == [(1, "a", 300)]


async def test_duplicate_in_batch_counts_once(redis_client: redis.Redis, settings: Settings) -> None:
    """An event id twice in one batch counts once, and its publish shows the one change."""
    board = Board(id="dup", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Names(settings.namespace).rank_changes_channel)
    await ranker.handle([entry(1, "a", 300), entry(2, "b", 100), entry(1, "a", 300), entry(3, "a", 5)])
    message = await next_message(pubsub)
    await pubsub.aclose()
    assert await scores(redis_client, settings, board) == [(1, "a", 305), (2, "b", 100)]
    assert message is not None
    assert msgspec.json.decode(message["data"]) == {
        "board": "dup",
        "period": "all",
        "seq": 1,
        "changes": [
            {"user_id": "a", "score": 305, "rank": 1, "old_score": None, "old_rank": None},
            {"user_id": "b", "score": 100, "rank": 2, "old_score": None, "old_rank": None},
        ],
    }


async def test_sum_reports_old_score_and_rank(redis_client: redis.Redis, settings: Settings) -> None:
    """A sum board's update carries each athlete's score and rank before the batch and after all its events."""
    board = Board(id="moves", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 50), entry(2, "b", 40)])
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Names(settings.namespace).rank_changes_channel)
    await ranker.handle([entry(3, "b", 7), entry(4, "b", 8)])
    message = await next_message(pubsub)
    await pubsub.aclose()
    assert message is not None
    assert msgspec.json.decode(message["data"])["changes"] == [
        {"user_id": "b", "score": 55, "rank": 1, "old_score": 40, "old_rank": 2},
    ]


async def test_flushed_script_loaded_again(redis_client: redis.Redis, settings: Settings) -> None:
    """After SCRIPT FLUSH the ranker loads the apply script again and the batch counts once."""
    board = Board(id="flush", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    await ranker.handle([entry(1, "a", 300)])
    await redis_client.script_flush()
    await ranker.handle([entry(1, "a", 300), entry(2, "b", 40)])
    assert await scores(redis_client, settings, board) == [(1, "a", 300), (2, "b", 40)]
    assert await redis_client.script_exists(ranker.apply_script.sha) == [True]


async def test_display_names_last_wins(redis_client: redis.Redis, settings: Settings) -> None:
    """One batch stores each athlete's last display name in one write."""
    board = Board(id="names", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    first = entry(1, "a", 1)
    renamed = entry(2, "a", 1)
    await ranker.handle([
        Entry(first.stream_id, msgspec.structs.replace(first.event, display_name="Ann")),
        Entry(renamed.stream_id, msgspec.structs.replace(renamed.event, display_name="Anna")),
        entry(3, "b", 1),
    ])
    assert await redis_client.hgetall(Names(settings.namespace).display_names) == {b"a": b"Anna"}


async def test_top_page_counts_and_skips_hidden(redis_client: redis.Redis, settings: Settings) -> None:
    """A top page leaves hidden athletes out of its rows and its count; one hidden elsewhere changes nothing."""
    board = Board(id="hide", metric="m", operator=Operator.SUM)
    ranker = make_ranker(redis_client, settings, board)
    values = {"a": 50, "b": 40, "c": 30, "d": 20}
    await ranker.handle([entry(i, user, value) for i, (user, value) in enumerate(values.items())])
    names = Names(settings.namespace)

    await redis_client.sadd(names.hidden_users, "nobody-here")
    unhidden_rows, unhidden_count = await read_top_page(redis_client, names, board, "all", 3)
    await redis_client.sadd(names.hidden_users, "a")
    hidden_rows, hidden_count = await read_top_page(redis_client, names, board, "all", 3)
    empty_rows, empty_count = await read_top_page(redis_client, names, board, "all", 0)

    assert [(s.rank, s.user_id) for s in unhidden_rows] == [(1, "a"), (2, "b"), (3, "c")]
    assert unhidden_count == 4
    assert [(s.rank, s.user_id) for s in hidden_rows] == [(1, "b"), (2, "c"), (3, "d")]
    assert hidden_count == 3
    assert empty_rows == []
    assert empty_count == 3
