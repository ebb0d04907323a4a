"""``rankstream rebuild``: recompute sorted sets from the events in PostgreSQL, with a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog
from tqdm import tqdm

from services.ranker.rebuild import Rebuilder, RebuildError
from shared.board_store import BoardStore
from shared.database import create_pool
from shared.names import Names
from shared.redis_client import connect_redis
from shared.runtime import resolve_servers
from shared.settings import Settings

log = structlog.get_logger(__name__)


async def run_rebuild(settings: Settings, board_ids: list[str], period: str | None, show_progress: bool = True) -> int:
    """Rebuild the chosen boards while services keep running; return the exit code."""
    assert settings.redis_url is not None and settings.database_url is not None
    client = connect_redis(settings.redis_url)
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    bar = tqdm(total=0, unit="event", desc="rebuilding", disable=not show_progress, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        store = BoardStore(pool, seed_file=settings.boards_file)
        boards = await store.open()
        rebuilder = Rebuilder(client, pool, Names(settings.namespace), boards)
        report = await rebuilder.rebuild(board_ids or None, period, progress)
    except RebuildError as error:
        print(f"rankstream: {error}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        await pool.close()
        await client.aclose()
    print(f"rebuilt {len(report.periods)} board periods from {report.events} events; applied {report.caught_up} events that arrived meanwhile")
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    settings = resolve_servers(settings)
    return asyncio.run(run_rebuild(settings, args.board or [], args.period, show_progress=not args.quiet))


def add_rebuild_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``rebuild`` command to the ``rankstream`` parser."""
    parser = commands.add_parser("rebuild", help="recompute board sorted sets from the events in PostgreSQL, safe while traffic flows")
    parser.add_argument("--board", action="append", metavar="BOARD", help="rebuild only this board (repeat for several; default: all)")
    parser.add_argument("--period", help="rebuild only this period id, such as 2026-W49 (archived periods need it)")
    parser.add_argument("--quiet", action="store_true", help="do not draw the progress bar")
    parser.set_defaults(handler=_rebuild)
