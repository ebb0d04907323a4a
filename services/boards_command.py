"""``rankstream boards apply FILE`` and ``rankstream boards list``: board definitions in PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg
import structlog

from shared.board_store import apply_boards, list_boards
from shared.boards import BoardError, load_boards
from shared.runtime import resolve_servers
from shared.settings import Settings

log = structlog.get_logger(__name__)


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url, timeout=10)


async def apply_file(settings: Settings, path: Path) -> int:
    """Apply the boards of a TOML file; print what changed and return the exit code."""
    try:
        boards = load_boards(path)
    except BoardError as error:
        print(f"rankstream: {error}", file=sys.stderr)
        return 2
    connection = await _connect(settings)
    try:
        report = await apply_boards(connection, boards)
    except BoardError as error:
        print(f"rankstream: {error}", file=sys.stderr)
        return 1
    finally:
        await connection.close(timeout=5)
    log.info("boards applied", created=report.created, updated=report.updated, unchanged=len(report.unchanged))
    print(f"created: {', '.join(report.created) or '-'}")
    print(f"updated: {', '.join(report.updated) or '-'}")
    print(f"unchanged: {', '.join(report.unchanged) or '-'}")
    return 0


async def print_boards(settings: Settings) -> int:
    connection = await _connect(settings)
    try:
        boards = await list_boards(connection)
    finally:
        await connection.close(timeout=5)
    print("id\tmetric\toperator\torder\treset\ttimezone\tscope\ttie\ttitle")
    for board in boards:
        print(
            f"{board.id}\t{board.metric}\t{board.operator.value}\t{board.order.value}\t{board.reset_text}"
            f"\t{board.timezone}\t{board.scope.value}\t{board.tie.value}\t{board.title}"
        )
    return 0


def _boards(args: argparse.Namespace, settings: Settings) -> int:
    settings = resolve_servers(settings)
    if args.boards_command == "apply":
        return asyncio.run(apply_file(settings, Path(args.file)))
    return asyncio.run(print_boards(settings))


def add_boards_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``boards`` command to the ``rankstream`` parser."""
    parser = commands.add_parser("boards", help="apply or list board definitions")
    parser.set_defaults(handler=_boards)
    actions = parser.add_subparsers(dest="boards_command", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", help="create or update the boards of a TOML file; applying it again changes nothing")
    apply.add_argument("file", metavar="FILE", help="a TOML file with one [[board]] table per board, like deploy/boards.toml")
    actions.add_parser("list", help="list the stored boards, one per line, tab-separated")
