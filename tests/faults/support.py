"""What the fault-injection tests share: a load poster, counts from PostgreSQL and Redis, and dedicated servers.

Every wait polls a condition with a deadline; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import redis.asyncio as redis

from shared.boards import BoardRegistry, load_boards
from shared.database import migrate_url
from shared.names import PERSISTER_GROUP, RANKER_GROUP, Names
from shared.periods import period_of
from shared.settings import Settings

# Fast claiming so a killed consumer's entries move on within a second; no rate limit for the load.
FAULT_ENV = {
    "RANKSTREAM_RATE_LIMIT_PER_MINUTE": "0",
    "RANKSTREAM_CLAIM_IDLE_MS": "500",
    "RANKSTREAM_CLAIM_INTERVAL_MS": "200",
    "RANKSTREAM_LOG_LEVEL": "info",
}

# A deferred trigger runs at COMMIT, after the INSERT. It sleeps for commit_delay.delay_s when the
# transaction inserted a row of the athlete 'slow-commit', so a test can hold that COMMIT open.
SLOW_COMMIT_SQL = """
CREATE TABLE commit_delay (delay_s double precision NOT NULL);
INSERT INTO commit_delay VALUES (30);
CREATE FUNCTION delay_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep((SELECT max(delay_s) FROM commit_delay));
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER events_delay_commit AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.user_id = 'slow-commit')
    EXECUTE FUNCTION delay_commit();
"""

SUM_BOARD = "pushups-weekly"
SUM_METRIC = "pushups"


def occurred_now() -> datetime:
    """An instant a few seconds ago, accepted by the ingest's clock-skew check."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)


def pushups(event_id: str, user_id: str, value: int, occurred_at: datetime) -> dict:
    return {"event_id": event_id, "user_id": user_id, "metric": SUM_METRIC, "value": value, "occurred_at": occurred_at.isoformat()}


def load_events(prefix: str, count: int, athletes: int, occurred_at: datetime) -> list[dict]:
    """``count`` push-up events spread over ``athletes`` athletes with values 1 to 5."""
    return [pushups(f"{prefix}-{i}", f"athlete-{i % athletes}", 1 + i % 5, occurred_at) for i in range(count)]


def batches(events: Sequence[dict], size: int) -> list[list[dict]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


@dataclass
class PostOutcome:
    """The ingest's responses, per event id and per request."""

    accepted: set[str] = field(default_factory=set)
    duplicate: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    retry_after: set[str] = field(default_factory=set)
    unanswered_requests: int = 0

    @property
    def stored(self) -> set[str]:
        """Event ids the ingest confirmed, in this run or an earlier attempt (a duplicate)."""
        return self.accepted | self.duplicate


class Poster:
    """Post batches of events to one ingest with bounded concurrency."""

    def __init__(self, base_url: str, key: str, *, concurrency: int = 8, timeout_s: float = 15.0) -> None:
        self.url = f"{base_url}/v1/events"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def post_batches(
        self, requests: Sequence[list[dict]], outcome: PostOutcome, *, retry_until_s: float = 0.0, requests_per_s: float | None = None
    ) -> PostOutcome:
        """Post every batch once; with ``retry_until_s``, repost a batch that got no 2xx until that many seconds passed.

        A repost sends the same event ids, so an event stored by an attempt
        whose response was lost comes back as a duplicate, as it would for a
        real client. ``requests_per_s`` paces the first attempts into a
        steady load instead of one burst.
        """
        semaphore = asyncio.Semaphore(self.concurrency)
        started_s = time.monotonic()
        deadline = started_s + retry_until_s

        async with aiohttp.ClientSession(timeout=self.timeout) as session:

            async def send(index: int, batch: list[dict]) -> None:
                if requests_per_s:
                    await asyncio.sleep(max(0.0, started_s + index / requests_per_s - time.monotonic()))
                async with semaphore:
                    for _attempt in range(1000):
                        if await self._post_once(session, batch, outcome):
                            return
                        if time.monotonic() >= deadline:
                            return
                        # A short pause before a client retry; nothing waits on it for synchronisation.
                        await asyncio.sleep(0.1)

            await asyncio.gather(*(send(index, batch) for index, batch in enumerate(requests)))
        return outcome

    async def _post_once(self, session: aiohttp.ClientSession, batch: list[dict], outcome: PostOutcome) -> bool:
        try:
            async with session.post(self.url, json=batch, headers=self.headers) as response:
                outcome.statuses.append(response.status)
                if response.status >= 300:
                    if "Retry-After" in response.headers:
                        outcome.retry_after.add(response.headers["Retry-After"])
                    return False
                body = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcome.unanswered_requests += 1
            return False
        for result in body["results"]:
            if result["status"] == "accepted":
                outcome.accepted.add(result["event_id"])
            elif result["status"] == "duplicate":
                outcome.duplicate.add(result["event_id"])
            else:
                raise AssertionError(f"event {result['event_id']} was {result['status']}: {result}")
        return True


async def stored_event_ids(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        return [row["event_id"] for row in await connection.fetch("SELECT event_id FROM events")]
    finally:
        await connection.close()


async def stored_count(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM events"))
    finally:
        await connection.close()


async def reference_totals(database_url: str) -> dict[str, float]:
    """Each athlete's push-up total recomputed from PostgreSQL, the system of record."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT user_id, sum(value) AS total FROM events WHERE metric = $1 GROUP BY user_id", SUM_METRIC)
    finally:
        await connection.close()
    return {row["user_id"]: float(row["total"]) for row in rows}


def sum_board_period(settings: Settings, occurred_at: datetime) -> str:
    board = BoardRegistry(load_boards(settings.boards_file)).by_id[SUM_BOARD]
    return period_of(board, occurred_at)


async def board_totals(client: redis.Redis, names: Names, period: str) -> dict[str, float]:
    """Each athlete's score on the push-up board, as the ranker left it."""
    reply = await client.zrange(names.board_scores(SUM_BOARD, period), 0, -1, withscores=True)
    return {user.decode(): float(score) for user, score in reply}


async def applied_count(client: redis.Redis, names: Names, period: str) -> int:
    """How many event ids the ranker recorded as applied to the push-up board."""
    return int(await client.zcard(names.board_applied(SUM_BOARD, period)))


async def group_backlog(client: redis.Redis, names: Names, group: str) -> tuple[int, int | None]:
    """Return (pending, lag) of a consumer group, or (-1, None) when the group does not exist."""
    try:
        infos = await client.xinfo_groups(names.events_stream)
    except redis.ResponseError:
        return -1, None
    for info in infos:
        if info["name"].decode() == group:
            lag = info.get("lag")
            return int(info["pending"]), None if lag is None else int(lag)
    return -1, None


async def groups_caught_up(client: redis.Redis, names: Names) -> bool:
    """True when both groups exist with nothing pending and nothing left to read."""
    for group in (RANKER_GROUP, PERSISTER_GROUP):
        pending, lag = await group_backlog(client, names, group)
        if pending != 0 or lag != 0:
            return False
    return True


async def consumer_pending(client: redis.Redis, names: Names, group: str) -> dict[str, int]:
    """Pending entries per consumer name of ``group``."""
    return {info["name"].decode(): int(info["pending"]) for info in await client.xinfo_consumers(names.events_stream, group)}


def database_url_for(base_url: str, database: str) -> str:
    return urlunsplit(urlsplit(base_url)._replace(path=f"/{database}"))


@asynccontextmanager
async def extra_database(server_url: str) -> AsyncIterator[str]:
    """Create and migrate a database beside the test's own; drop it afterwards."""
    database = f"test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    url = database_url_for(server_url, database)
    await migrate_url(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def acl_user_without_xack(client: redis.Redis, settings: Settings) -> AsyncIterator[str]:
    """Create a Redis user that may run every command except XACK; yield a URL that logs in as it.

    A consumer logged in as this user handles entries but can never
    acknowledge them, so it stops between its effect and its ack.
    """
    user = f"noack-{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    await client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-xack")
    parts = urlsplit(settings.redis_url)
    url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
    try:
        yield url
    finally:
        await client.execute_command("ACL", "DELUSER", user)


def with_database(settings: Settings, database_url: str, namespace: str | None = None) -> Settings:
    return replace(settings, database_url=database_url, namespace=namespace or settings.namespace)


def log_events(log_text: str, event: str) -> int:
    """Count the JSON log lines of ``event`` in a service's log."""
    return log_text.count(f'"event": "{event}"')


def report(test: str, **counts: int) -> None:
    """Print the counts a test compared, so a passing run shows them with ``-s`` or in the captured output."""
    print(f"{test}: " + ", ".join(f"{name}={value}" for name, value in counts.items()))


def assert_totals_equal(board: dict[str, float], reference: dict[str, float]) -> None:
    assert sorted(board) == sorted(reference)
    for user, total in reference.items():
        assert board[user] == total, f"{user}: board {board[user]} != PostgreSQL {total}"


def tmp_dir(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path
