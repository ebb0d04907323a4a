"""The persister's insert into a real PostgreSQL: COPY first, then a conflict-checked insert, then row by row."""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from services.persister.store import InsertResult, insert_events
from shared.schema import StreamEvent
from shared.stream import Entry

WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def entry(stream_id: str, event_id: str, user: str, value: float, groups: list[str] | None = None) -> Entry:
    event = StreamEvent(
        event_id=event_id, user_id=user, metric="pushups", value=value, occurred_at=WHEN, received_at=WHEN,
        display_name=None if groups is None else f"name of {user}", groups=groups or [],
    )
    return Entry(stream_id, event)


async def stored_rows(db: asyncpg.Connection) -> list[tuple]:
    rows = await db.fetch("SELECT event_id, user_id, value, display_name, groups, stream_id, occurred_at FROM events ORDER BY event_id")
    return [tuple(row) for row in rows]


async def test_batch_with_duplicate_id_stored_once(db: asyncpg.Connection) -> None:
    """A batch repeating an event id stores the first copy once, with every column."""
    result = await insert_events(db, [entry("1-0", "e1", "a", 3), entry("2-0", "e2", "b", 2.5, ["club", "team"]), entry("3-0", "e1", "a", 9)])
    assert result == InsertResult(inserted=2, rejected={})
    assert await stored_rows(db) == [
        ("e1", "a", 3.0, None, [], "1-0", WHEN),
        ("e2", "b", 2.5, "name of b", ["club", "team"], "2-0", WHEN),
    ]


async def test_redelivered_entries_stored_once(db: asyncpg.Connection) -> None:
    """A batch holding events already stored, as after a crash before the ack, stores only the new ones."""
    first = await insert_events(db, [entry("1-0", "e1", "a", 3), entry("2-0", "e2", "b", 4)])
    again = await insert_events(db, [entry("1-0", "e1", "a", 3), entry("2-0", "e2", "b", 4), entry("3-0", "e3", "c", 5, ["club", "team"])])
    assert first == InsertResult(inserted=2, rejected={})
    assert again == InsertResult(inserted=1, rejected={})
    assert await stored_rows(db) == [
        ("e1", "a", 3.0, None, [], "1-0", WHEN),
        ("e2", "b", 4.0, None, [], "2-0", WHEN),
        ("e3", "c", 5.0, "name of c", ["club", "team"], "3-0", WHEN),
    ]


async def test_rejected_row_among_stored_and_new(db: asyncpg.Connection) -> None:
    """With a stored event, a new one and one the database rejects, only the new one is added and the bad one is reported."""
    await db.execute("ALTER TABLE events ADD CONSTRAINT events_user_not_blocked CHECK (user_id <> 'blocked')")
    await insert_events(db, [entry("1-0", "e1", "a", 3)])
    result = await insert_events(db, [entry("1-0", "e1", "a", 3), entry("2-0", "e2", "blocked", 4), entry("3-0", "e3", "c", 5)])
    assert result.inserted == 1
    assert list(result.rejected) == ["2-0"]
    assert result.rejected["2-0"].startswith("database rejected the row (23514 CheckViolationError): ")
    assert [row[0] for row in await stored_rows(db)] == ["e1", "e3"]
