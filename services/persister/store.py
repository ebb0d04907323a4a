"""Bulk, idempotent insert of stream entries into the events table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from shared.stream import Entry

log = structlog.get_logger(__name__)

# One statement for the whole batch: arrays are unnested server-side, and the
# primary key on event_id turns a re-delivered event into a no-op.
INSERT_EVENTS = """
INSERT INTO events (event_id, user_id, metric, value, occurred_at, received_at, display_name, groups, stream_id)
SELECT e.event_id, e.user_id, e.metric, e.value, e.occurred_at, e.received_at, e.display_name,
       COALESCE(string_to_array(e.groups, chr(31)), '{}'), e.stream_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::timestamptz[], $6::timestamptz[],
            $7::text[], $8::text[], $9::text[])
     AS e(event_id, user_id, metric, value, occurred_at, received_at, display_name, groups, stream_id)
ON CONFLICT (event_id) DO NOTHING
"""

_GROUP_SEPARATOR = "\x1f"

# The columns COPY fills, in the order of batch_rows.
EVENT_COLUMNS = ("event_id", "user_id", "metric", "value", "occurred_at", "received_at", "display_name", "groups", "stream_id")

# Errors that concern the rows themselves: invalid data (SQLSTATE class 22), a
# violated constraint (class 23) or an exception raised by a trigger (P0001).
# Retrying such a row can never succeed.
ROW_REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.RaiseError)


@dataclass
class InsertResult:
    """Rows stored now, and the entries the database rejected, by stream id, with its error."""

    inserted: int = 0
    rejected: dict[str, str] = field(default_factory=dict)


def batch_columns(entries: Sequence[Entry]) -> list[list]:
    """Return the nine column arrays of INSERT_EVENTS; a later duplicate of an event id in the batch is dropped."""
    rows = batch_rows(entries)
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in EVENT_COLUMNS]
    # INSERT_EVENTS takes each row's groups as one text, because arrays of arrays must be rectangular.
    columns[7] = [_GROUP_SEPARATOR.join(groups) if groups else None for groups in columns[7]]
    return columns


def batch_rows(entries: Sequence[Entry]) -> list[tuple]:
    """Return one row per event in EVENT_COLUMNS order for COPY; a later duplicate of an event id in the batch is dropped."""
    rows: list[tuple] = []
    seen: set[str] = set()
    for entry in entries:
        event = entry.event
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        rows.append((
            event.event_id,
            event.user_id,
            event.metric,
            float(event.value),
            event.occurred_at,
            event.received_at,
            event.display_name,
            event.groups,
            entry.stream_id,
        ))
    return rows


def _inserted_rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


async def insert_events(connection: asyncpg.Connection, entries: Sequence[Entry]) -> InsertResult:
    """Insert a batch in one transaction, trying the cheapest way first; return what was stored and rejected.

    First COPY, which costs both sides the least but fails as a whole when
    one event is already stored (a redelivered entry). Then one INSERT that
    skips stored events. If the database rejects a row, row by row: each
    row gets its own savepoint, so the rejected rows are reported with the
    database's error and the others are still stored, all in one
    transaction. Connection errors propagate. A cancellation before the
    commit completes rolls the transaction back.
    """
    try:
        async with connection.transaction():
            status = await connection.copy_records_to_table("events", records=batch_rows(entries), columns=EVENT_COLUMNS)
        return InsertResult(inserted=_inserted_rows(status))
    except ROW_REJECTED as error:
        log.info("batch copy failed, inserting with conflict check", entries=len(entries), first_id=entries[0].stream_id, error=str(error))

    try:
        async with connection.transaction():
            status = await connection.execute(INSERT_EVENTS, *batch_columns(entries))
        return InsertResult(inserted=_inserted_rows(status))
    except ROW_REJECTED as error:
        log.warning("batch rejected by database, inserting row by row", entries=len(entries), first_id=entries[0].stream_id, error=str(error))

    result = InsertResult()
    async with connection.transaction():
        for entry in entries:
            try:
                async with connection.transaction():
                    status = await connection.execute(INSERT_EVENTS, *batch_columns([entry]))
            except ROW_REJECTED as error:
                result.rejected[entry.stream_id] = f"database rejected the row ({error.sqlstate} {type(error).__name__}): {error}"
            else:
                result.inserted += _inserted_rows(status)
    return result
