"""Board definitions in PostgreSQL, and the loader every service polls them with.

``apply_boards`` creates or updates definitions declaratively, and applying the
same set twice changes nothing. A board that already has scores keeps its
ranking fields (``RANKING_FIELDS`` in ``shared.boards``), because its stored
scores would no longer match a new rule. Title, unit and retention may change.

:class:`BoardStore` keeps a :class:`BoardRegistry` up to date by polling the
highest definition ``version`` every ``poll_interval_s``, so the ranker, ingest
and gateway pick up changes without a restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec
import structlog

from shared.boards import RANKING_FIELDS, Board, BoardError, BoardRegistry, board_from_document, load_boards

log = structlog.get_logger(__name__)

# Any fixed number works; it only has to be the same in every process.
_SEED_LOCK_ID = 7_246_551_002


@dataclass
class ApplyReport:
    """Board ids by what applying a set did to them."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _definition(board: Board) -> str:
    return msgspec.json.encode(board).decode()


def _board_of(row: asyncpg.Record) -> Board:
    definition = row["definition"]
    if isinstance(definition, str):
        definition = json.loads(definition)
    return msgspec.convert(definition, Board)


async def list_boards(connection: asyncpg.Connection | asyncpg.Pool) -> list[Board]:
    """Return every stored definition, ordered by id."""
    rows = await connection.fetch("SELECT definition::text AS definition FROM boards ORDER BY id")
    return [_board_of(row) for row in rows]


async def board_has_scores(connection: asyncpg.Connection, board: Board) -> bool:
    """Return whether ``board`` has scores: persisted events of its metric or archived results."""
    return await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM events WHERE metric = $1) OR EXISTS (SELECT 1 FROM board_results WHERE board_id = $2)",
        board.metric, board.id,
    )


def changed_ranking_fields(old: Board, new: Board) -> list[str]:
    return [name for name in RANKING_FIELDS if getattr(old, name) != getattr(new, name)]


async def apply_boards(connection: asyncpg.Connection, boards: Sequence[Board]) -> ApplyReport:
    """Create or update ``boards`` in one transaction; raise BoardError and change nothing if one is rejected."""
    report = ApplyReport()
    ids = [board.id for board in boards]
    if len(set(ids)) != len(ids):
        raise BoardError("the set defines a board id twice; give each board its own id")
    async with connection.transaction():
        rows = await connection.fetch("SELECT definition::text AS definition FROM boards WHERE id = any($1::text[]) FOR UPDATE", ids)
        existing = {board.id: board for board in map(_board_of, rows)}
        for board in boards:
            old = existing.get(board.id)
            if old is None:
                await connection.execute("INSERT INTO boards (id, definition) VALUES ($1, $2::jsonb)", board.id, _definition(board))
                report.created.append(board.id)
                continue
            if old == board:
                report.unchanged.append(board.id)
                continue
            changed = changed_ranking_fields(old, board)
            if changed and await board_has_scores(connection, old):
                raise BoardError(
                    f"board {board.id!r} has scores, so {', '.join(changed)} cannot change; "
                    "create a new board with a new id instead (title, unit and retention_s may change)"
                )
            await connection.execute(
                "UPDATE boards SET definition = $2::jsonb, version = nextval('board_versions'), updated_at = now() WHERE id = $1",
                board.id, _definition(board),
            )
            report.updated.append(board.id)
    return report


async def seed_if_empty(connection: asyncpg.Connection, boards: Sequence[Board]) -> bool:
    """Store ``boards`` when no board is defined yet; return whether it did."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK_ID)
        if await connection.fetchval("SELECT EXISTS (SELECT 1 FROM boards)"):
            return False
        for board in boards:
            await connection.execute("INSERT INTO boards (id, definition) VALUES ($1, $2::jsonb)", board.id, _definition(board))
    log.info("boards seeded", boards=len(boards))
    return True


def parse_board_set(document: object, where: str = "body") -> list[Board]:
    """Parse ``{"board": [...]}`` or a list of definitions, as the admin API accepts them."""
    entries = document.get("board") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise BoardError(f"{where}: expected a list of board definitions or an object {{\"board\": [...]}}")
    return [board_from_document(entry, f"{where}.board[{index}]") for index, entry in enumerate(entries)]


class BoardStore:
    """A registry of the stored boards, refreshed by polling their version.

    :meth:`open` seeds the table from ``seed_file`` when it is empty, then loads.
    :meth:`run` polls until cancelled; a failed poll is logged and retried, and
    the registry keeps the last good definitions meanwhile.
    """

    def __init__(self, pool: asyncpg.Pool, *, seed_file: Path | None = None, poll_interval_s: float = 1.0) -> None:
        self.pool = pool
        self.seed_file = seed_file
        self.poll_interval_s = poll_interval_s
        self.registry = BoardRegistry()
        self.version: tuple[int, int] = (-1, -1)

    async def open(self) -> BoardRegistry:
        if self.seed_file is not None:
            defaults = load_boards(self.seed_file)
            async with self.pool.acquire() as connection:
                await seed_if_empty(connection, defaults)
        await self.refresh()
        return self.registry

    async def refresh(self) -> bool:
        """Reload the definitions if their version changed; return whether they did."""
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow("SELECT coalesce(max(version), 0) AS version, count(*) AS boards FROM boards")
            version = (row["version"], row["boards"])
            if version == self.version:
                return False
            boards = await list_boards(connection)
        self.registry.replace(boards)
        self.version = version
        log.info("boards loaded", boards=len(boards), version=version[0])
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("boards poll failed, retrying", error=str(error), retry_in_s=self.poll_interval_s)
