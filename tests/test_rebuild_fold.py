"""The rebuild's bulk fold writes exactly the keys the apply script left after applying the same events one batch at a time."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as redis

from services.ranker import rebuild, replay_writer
from services.ranker.ranker import closing_member
from services.ranker.rebuild import EMPTY_STREAM_LOOKBACK_MS, Rebuilder, catch_up_mark
from services.ranker.replay import PeriodFinder, epoch_us, order_member
from shared.boards import Board, Operator, Order, Reset, Scope, Tie, WeekStart
from shared.names import Names
from shared.periods import closes_at, period_of
from shared.settings import Settings
from services.persister.store import insert_events
from shared.schema import stream_event_decoder
from shared.stream import EVENT_FIELD, Entry
from tests.board_pipeline import Pipeline, board_pipeline

# Around the end of daylight-saving time in Europe (Oct 25) and the US (Nov 1).
START = datetime(2026, 10, 22, tzinfo=timezone.utc)
USERS = [f"u{number}" for number in range(7)]
HIDDEN_USER = "u6"
BOARDS = [
    Board(id="sum-daily-ny", metric="m", operator=Operator.SUM, reset=Reset.DAILY, timezone="America/New_York", decimals=1, late_grace_s=0),
    Board(id="sum-first", metric="m", operator=Operator.SUM, tie=Tie.FIRST, decimals=1),
    Board(
        id="best-lower-first", metric="m", operator=Operator.BEST, order=Order.LOWER, reset=Reset.WEEKLY, timezone="Europe/Berlin",
        tie=Tie.FIRST, decimals=1, late_grace_s=1800,
    ),
    Board(id="best-shared", metric="m", operator=Operator.BEST, reset=Reset.MONTHLY, decimals=2),
    Board(id="latest-first", metric="m", operator=Operator.LATEST, reset=Reset.DAILY, timezone="Asia/Kolkata", tie=Tie.FIRST, decimals=1),
    Board(id="latest-shared", metric="m", operator=Operator.LATEST, order=Order.LOWER, decimals=1),
    Board(id="count-first", metric="m", operator=Operator.COUNT, tie=Tie.FIRST, reset=Reset.CRON, cron="30 5 * * *", timezone="Europe/Berlin"),
    Board(id="count-lower", metric="m", operator=Operator.COUNT, order=Order.LOWER),
    Board(
        id="sum-clubs", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY, week_start=WeekStart.SUNDAY, scope=Scope.GROUP,
        tie=Tie.FIRST, decimals=1,
    ),
    Board(id="best-other-metric", metric="other", operator=Operator.BEST, tie=Tie.FIRST),
]
# Parts whose values are compared exactly; applied ids are compared as members
# because their scores are the time each was applied.
EXACT_PARTS = ("scores", "latest_at", "reached", "order")


def sample_events(pipeline: Pipeline, count: int) -> list[tuple[datetime, dict]]:
    """Return (received at, event) pairs: repeated values for ties, late arrivals, groups, names, two metrics."""
    rng = random.Random(8)
    events = []
    for _ in range(count):
        occurred = START + timedelta(minutes=5 * rng.randrange(0, 12 * 24 * 12))
        received = occurred + timedelta(minutes=rng.choice([0, 0, 1, 20, 45, 70, 200]))
        extra: dict = {"groups": rng.sample(["club-a", "club-b", "club-c"], rng.randrange(0, 3))}
        if rng.random() < 0.3:
            extra["display_name"] = f"Name {rng.randrange(100)}"
        metric = "other" if rng.random() < 0.1 else "m"
        value = rng.choice([1, 2.5, 2.5, 4, 7.25, 10])
        events.append((received, pipeline.event(rng.choice(USERS), value, occurred.isoformat(), metric=metric, **extra)))
    events.sort(key=lambda pair: pair[0])
    return events


async def board_keys(client: redis.Redis, names: Names) -> dict[str, object]:
    """Return every board key and the closing index with their full contents, applied ids as sets of members."""
    contents: dict[str, object] = {}
    async for raw in client.scan_iter(match=f"{names.namespace}:{{board:*", count=1000):
        key = raw.decode()
        kind = (await client.type(key)).decode()
        if kind == "zset":
            members = await client.zrange(key, 0, -1, withscores=True)
            contents[key] = {member for member, _ in members} if key.endswith(":applied") else members
        elif kind == "hash":
            contents[key] = await client.hgetall(key)
        else:
            contents[key] = await client.get(key)
    contents[names.closing_periods] = await client.zrange(names.closing_periods, 0, -1, withscores=True)
    contents[names.display_names] = await client.hgetall(names.display_names)
    return contents


def period_in(key: str) -> str:
    """Return the period id of a board key such as ``ns:{board:b:2026-W43}:scores``."""
    return key.split("{board:", 1)[1].split("}", 1)[0].rsplit(":", 1)[1]


async def apply_one_batch_at_a_time(pipeline: Pipeline, count: int) -> None:
    """Post the sample events seven at a time, the clock at the last one's receive time, and let the ranker apply each post."""
    admin = {"Authorization": f"Bearer {pipeline.admin_key}"}
    response = await pipeline.http.put(f"/v1/admin/hidden/{HIDDEN_USER}", headers=admin)
    assert response.status == 200
    events = sample_events(pipeline, count)
    for start in range(0, len(events), 7):
        batch = events[start : start + 7]
        pipeline.clock.set(batch[-1][0])
        await pipeline.post([event for _received, event in batch])
        await pipeline.process()


async def delete_board_state(client: redis.Redis, names: Names) -> None:
    """Delete what a lost Redis would lack, except the sequence numbers, which the swap must advance by one."""
    async for raw in client.scan_iter(match=f"{names.namespace}:{{board:*", count=1000):
        if not raw.endswith(b":seq"):
            await client.delete(raw)
    await client.delete(names.closing_periods, names.display_names)


def expected_after_rebuild(before: dict[str, object]) -> dict[str, object]:
    """Return ``before`` with the sequence number of every period advanced by the swap.

    A period whose only athletes are hidden never changed a rank, so it had no
    sequence number before; the swap starts it at 1.
    """
    expected = dict(before)
    for key in before:
        if key.endswith(":scores"):
            seq_key = key.removesuffix(":scores") + ":seq"
            expected[seq_key] = str(int(before.get(seq_key, b"0")) + 1).encode()
    return expected


async def assert_applied_times(client: redis.Redis, names: Names, before: dict[str, object], earliest_ms: int, latest_ms: int) -> None:
    for key in before:
        if key.endswith(":applied"):
            for _member, applied_ms in await client.zrange(key, 0, -1, withscores=True):
                assert earliest_ms <= applied_ms <= latest_ms, key


@pytest.mark.parametrize(("flush_writes", "chunk_members"), [(50_000, 5000), (3, 2)], ids=["one-write", "many-small-writes"])
async def test_rebuild_equals_incremental_apply(
    settings: Settings, redis_client, monkeypatch: pytest.MonkeyPatch, flush_writes: int, chunk_members: int
) -> None:
    """Every board key after a rebuild equals what the apply script left, for every operator, reset, tie policy and scope."""
    monkeypatch.setattr(rebuild, "FLUSH_WRITES", flush_writes)
    monkeypatch.setattr(replay_writer, "CHUNK_MEMBERS", chunk_members)
    async with board_pipeline(settings, BOARDS, START) as pipeline:
        await apply_one_batch_at_a_time(pipeline, 160)
        names = pipeline.names
        before = await board_keys(pipeline.client, names)
        scores_keys = [key for key in before if key.endswith(":scores")]
        assert len(scores_keys) > 40
        assert any(key.endswith(":reached") for key in before)
        assert any(key.endswith(":latest_at") for key in before)
        assert any(key.endswith(":order") for key in before)
        assert any("{board:sum-clubs/club-b:" in key for key in before)
        assert any("{board:count-first:2026-10-2" in key for key in before)
        assert before[names.display_names]
        hidden_on = [key for key in scores_keys if any(member == HIDDEN_USER.encode() for member, _ in before[key])]
        assert hidden_on

        await delete_board_state(pipeline.client, names)
        earliest_ms = int(time.time() * 1000)
        report = await Rebuilder(pipeline.client, pipeline.pool, names, pipeline.store.registry).rebuild()
        latest_ms = int(time.time() * 1000)

        assert report.events == await pipeline.pool.fetchval("SELECT count(*) FROM events")
        assert report.caught_up == 0
        assert len(report.periods) == len(scores_keys)
        after = await board_keys(pipeline.client, names)
        assert after == expected_after_rebuild(before)
        await assert_applied_times(pipeline.client, names, before, earliest_ms, latest_ms)


@pytest.mark.parametrize("stream_loss", ["trimmed", "deleted"])
async def test_rebuild_without_stream_entries(settings: Settings, redis_client, stream_loss: str) -> None:
    """With the stream trimmed or deleted, every event still counts once and the keys equal the incremental ones.

    A trimmed stream keeps its last generated id, so nothing is caught up. A
    deleted stream leaves only the server time, so the catch-up applies the
    events of the last minute again from PostgreSQL, and the apply script drops them.
    """
    async with board_pipeline(settings, BOARDS[:3], START) as pipeline:
        await apply_one_batch_at_a_time(pipeline, 40)
        names = pipeline.names
        before = await board_keys(pipeline.client, names)
        if stream_loss == "trimmed":
            await pipeline.client.xtrim(names.events_stream, maxlen=0, approximate=False)
            assert await pipeline.client.xlen(names.events_stream) == 0
        else:
            await pipeline.client.delete(names.events_stream)

        await delete_board_state(pipeline.client, names)
        report = await Rebuilder(pipeline.client, pipeline.pool, names, pipeline.store.registry).rebuild()

        replayed = await pipeline.pool.fetchval("SELECT count(*) FROM events WHERE metric = 'm'")
        assert report.events == replayed
        assert report.caught_up == (0 if stream_loss == "trimmed" else replayed)
        assert await board_keys(pipeline.client, names) == expected_after_rebuild(before)


async def test_rebuild_one_period_keeps_others(settings: Settings, redis_client) -> None:
    """A rebuild of one period writes only that period, with the keys the incremental apply left."""
    async with board_pipeline(settings, BOARDS[:3], START) as pipeline:
        await apply_one_batch_at_a_time(pipeline, 40)
        names = pipeline.names
        before = await board_keys(pipeline.client, names)
        periods = sorted(period_in(key) for key in before if "{board:sum-daily-ny:" in key and key.endswith(":seq"))
        assert periods
        period = periods[0]
        own = names.board_tag("sum-daily-ny", period)
        for part in ("scores", "applied"):
            await pipeline.client.delete(f"{own}:{part}")
        other = names.board_scores("sum-first", "all")
        await pipeline.client.delete(other)

        report = await Rebuilder(pipeline.client, pipeline.pool, names, pipeline.store.registry).rebuild(["sum-daily-ny"], period)

        assert report.periods == [("sum-daily-ny", period)]
        after = await board_keys(pipeline.client, names)
        for part in EXACT_PARTS + ("applied",):
            assert after.get(f"{own}:{part}") == before.get(f"{own}:{part}"), part
        assert after[f"{own}:seq"] == str(int(before[f"{own}:seq"]) + 1).encode()
        assert other not in after


async def test_rebuild_skips_archived_periods(settings: Settings, redis_client) -> None:
    """Archived periods, of a global and of a group ranking, are not rebuilt; every other key equals the incremental one."""
    boards = [BOARDS[0], BOARDS[8]]
    async with board_pipeline(settings, boards, START) as pipeline:
        await apply_one_batch_at_a_time(pipeline, 60)
        names = pipeline.names
        before = await board_keys(pipeline.client, names)
        daily = sorted(key for key in before if "{board:sum-daily-ny:" in key and key.endswith(":scores"))[0]
        club = sorted(key for key in before if "{board:sum-clubs/club-a:" in key and key.endswith(":scores"))[0]
        archived = {daily.removesuffix(":scores"): ("sum-daily-ny", ""), club.removesuffix(":scores"): ("sum-clubs", "club-a")}
        for tag, (board_id, group_key) in archived.items():
            await pipeline.pool.execute(
                "INSERT INTO board_periods (board_id, group_key, period, participants) VALUES ($1, $2, $3, 1)", board_id, group_key, period_in(tag)
            )

        await delete_board_state(pipeline.client, names)
        report = await Rebuilder(pipeline.client, pipeline.pool, names, pipeline.store.registry).rebuild()

        # An archived period keeps its sequence number and gets no closing mark.
        expected = expected_after_rebuild(before)
        for key in list(expected):
            tag, part = key.rsplit(":", 1)
            if tag in archived:
                if part == "seq" and key in before:
                    expected[key] = before[key]
                else:
                    del expected[key]
        archived_members = {closing_member("sum-daily-ny", None, period_in(daily)), closing_member("sum-clubs", "club-a", period_in(club))}
        expected[names.closing_periods] = [pair for pair in before[names.closing_periods] if pair[0].decode() not in archived_members]
        assert len(expected[names.closing_periods]) == len(before[names.closing_periods]) - 2
        assert len(report.periods) == len([key for key in before if key.endswith(":scores")]) - 2
        assert await board_keys(pipeline.client, names) == expected


def test_order_member_layout() -> None:
    """Order members sort by score descending, then reached, then user id, as apply.lua writes them."""
    assert order_member(0, "0101763000000000", "a") == "19007199254740992:0101763000000000:a"
    assert order_member(25, "0101763000000000", "b") == "19007199254740967:0101763000000000:b"
    assert order_member(-25, "0101763000000000", "c") == "20000000000000025:0101763000000000:c"
    assert order_member(25, "1", "x") < order_member(0, "1", "x") < order_member(-1, "1", "x") < order_member(-25, "1", "x")


@pytest.mark.parametrize("board", BOARDS, ids=lambda board: board.id)
def test_period_finder_matches_period_of(board: Board) -> None:
    """The cached period lookup returns what period_of and closes_at return, forward, backward and across daylight-saving changes."""
    instants = [START + timedelta(minutes=13 * step, microseconds=7 * step) for step in range(16 * 24 * 60 // 13)]
    shuffled = random.Random(3).sample(instants, len(instants))
    finder = PeriodFinder()
    for instant in instants + shuffled:
        closing = closes_at(board, period_of(board, instant))
        assert finder.find(board, epoch_us(instant)) == (period_of(board, instant), None if closing is None else epoch_us(closing))


def test_catch_up_mark_without_entries() -> None:
    """With no entry in the stream, the mark is the last generated id or the server time less the lookback, whichever is later."""
    now_ms = 1_800_000_000_000
    assert catch_up_mark(None, now_ms) == f"{now_ms - EMPTY_STREAM_LOOKBACK_MS}-0"
    assert catch_up_mark("0-0", now_ms) == f"{now_ms - EMPTY_STREAM_LOOKBACK_MS}-0"
    assert catch_up_mark(f"{now_ms - 5}-3", now_ms) == f"{now_ms - 5}-3"
    assert catch_up_mark(f"{now_ms + 9000}-0", now_ms) == f"{now_ms + 9000}-0"
    assert catch_up_mark(None, 5) == "0-0"


EDGE_BOARDS = [
    Board(id="latest-first", metric="m", operator=Operator.LATEST, tie=Tie.FIRST, decimals=2),
    Board(id="latest-lower", metric="m", operator=Operator.LATEST, order=Order.LOWER, reset=Reset.DAILY, decimals=2),
    Board(id="best-first", metric="m", operator=Operator.BEST, tie=Tie.FIRST, decimals=2),
    Board(id="best-lower-first", metric="m", operator=Operator.BEST, order=Order.LOWER, tie=Tie.FIRST, decimals=2),
    Board(id="sum-first", metric="m", operator=Operator.SUM, tie=Tie.FIRST, decimals=2),
    Board(id="count-lower-first", metric="m", operator=Operator.COUNT, order=Order.LOWER, tie=Tie.FIRST),
]


async def test_rebuild_equals_apply_on_edge_values(settings: Settings, redis_client) -> None:
    """Equal instants, ids that sort differently as text, negative and half-way decimal values, and renames posted late all rebuild as applied."""
    async with board_pipeline(settings, EDGE_BOARDS, START + timedelta(hours=2)) as pipeline:
        at = (START + timedelta(hours=1)).isoformat()
        earlier = (START + timedelta(minutes=30)).isoformat()
        posts = [
            # Same instant, different values; "e10" sorts before "e9" as text.
            [{**pipeline.event("a", 2.675, at, display_name="Ann"), "event_id": "e9"}],
            [{**pipeline.event("a", -3.5, at), "event_id": "e10"}],
            [pipeline.event("a", 1.005, earlier)],
            # A rename sent last but for an earlier workout.
            [pipeline.event("b", -0.125, at, display_name="Bea")],
            [pipeline.event("b", 0.375, earlier, display_name="Beatrice")],
            [pipeline.event("c", 2.675, earlier), pipeline.event("c", 2.675, at)],
        ]
        for events in posts:
            await pipeline.post(events)
            await pipeline.process()
        names = pipeline.names
        before = await board_keys(pipeline.client, names)
        assert before[names.display_names] == {b"a": b"Ann", b"b": b"Beatrice"}

        await delete_board_state(pipeline.client, names)
        await Rebuilder(pipeline.client, pipeline.pool, names, pipeline.store.registry).rebuild()

        after = await board_keys(pipeline.client, names)
        assert after[names.display_names] == before[names.display_names]
        assert after == expected_after_rebuild(before)


class TrafficDuringRebuild(Rebuilder):
    """A rebuilder that lets events arrive while it replays, and the persister store and trim them while it catches up.

    Events ``applied_then_persisted`` reach the ranker before the swap, so they
    count on the old keys only, and reach PostgreSQL only once the catch-up has
    begun. The stream entries are trimmed then too, as the consumers trim what
    both groups acknowledged.
    """

    def __init__(self, pipeline: Pipeline, persisted: list[dict], applied_then_persisted: list[dict]) -> None:
        super().__init__(pipeline.client, pipeline.pool, pipeline.names, pipeline.store.registry)
        self.pipeline = pipeline
        self.persisted = persisted
        self.applied_then_persisted = applied_then_persisted
        self.late_entries: list[Entry] = []

    async def _replay(self, fold, metrics, total, progress) -> int:
        events = await super()._replay(fold, metrics, total, progress)
        posted = self.persisted + self.applied_then_persisted
        await self.pipeline.post(posted)
        raw = await self.client.xrevrange(self.names.events_stream, count=len(posted))
        entries = [Entry(entry_id.decode(), stream_event_decoder.decode(fields[EVENT_FIELD])) for entry_id, fields in reversed(raw)]
        await self.pipeline.ranker.handle(entries)
        async with self.pool.acquire() as connection:
            await insert_events(connection, entries[: len(self.persisted)])
        self.late_entries = entries[len(self.persisted) :]
        return events

    async def _apply_live(self, entries, registry, hidden) -> int:
        if self.late_entries:
            async with self.pool.acquire() as connection:
                await insert_events(connection, self.late_entries)
            await self.client.xtrim(self.names.events_stream, maxlen=0, approximate=False)
            self.late_entries = []
        return await super()._apply_live(entries, registry, hidden)


async def test_rebuild_counts_events_persisted_during_catch_up(settings: Settings, redis_client) -> None:
    """An event the ranker applied before the swap and the persister stored during the catch-up counts once on the new keys."""
    async with board_pipeline(settings, [BOARDS[1]], START + timedelta(hours=2)) as pipeline:
        at = (START + timedelta(hours=1)).isoformat()
        await pipeline.post([pipeline.event("a", 1, at)])
        await pipeline.process()
        names = pipeline.names
        scores_key = names.board_scores("sum-first", "all")

        rebuilder = TrafficDuringRebuild(pipeline, [pipeline.event("a", 2, at)], [pipeline.event("b", 4, at)])
        await rebuilder.rebuild()

        assert await pipeline.client.zrange(scores_key, 0, -1, withscores=True) == [(b"a", 30.0), (b"b", 40.0)]
        assert await pipeline.client.zcard(names.board_applied("sum-first", "all")) == 3
