"""``rankstream dlq list`` and ``rankstream dlq replay [ID...]``: inspect and re-drive dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from shared.dead_letters import all_dead_letter_ids, list_dead_letters, replay_dead_letters
from shared.names import Names
from shared.redis_client import connect_redis
from shared.runtime import resolve_servers
from shared.settings import Settings

log = structlog.get_logger(__name__)


async def _list(settings: Settings, count: int) -> int:
    client = connect_redis(settings.redis_url)
    try:
        letters = await list_dead_letters(client, Names(settings.namespace), count=count)
    finally:
        await client.aclose()
    if not letters:
        print("the dead-letter stream is empty")
    for letter in letters:
        print(
            f"{letter.dead_letter_id}\tgroup={letter.group}\tsource_id={letter.source_id}\t"
            f"event_id={letter.event_id or '-'}\tdeliveries={letter.deliveries}\terror={letter.error}"
        )
    return 0


async def _replay(settings: Settings, ids: list[str]) -> int:
    client = connect_redis(settings.redis_url)
    names = Names(settings.namespace)
    try:
        if not ids:
            ids = await all_dead_letter_ids(client, names)
        replays = await replay_dead_letters(client, names, ids)
    finally:
        await client.aclose()
    failed = 0
    for replay in replays:
        if replay.new_stream_id is None:
            failed += 1
            print(f"{replay.dead_letter_id}: not replayed: {replay.reason}", file=sys.stderr)
        else:
            log.info("dead letter replayed", dead_letter_id=replay.dead_letter_id, stream_id=replay.new_stream_id)
            print(f"{replay.dead_letter_id}: replayed as {replay.new_stream_id}")
    print(f"replayed {len(replays) - failed} of {len(replays)} dead letters")
    return 1 if failed else 0


def run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    # Dead letters live in Redis only, so a Redis URL alone is enough.
    settings = settings if settings.redis_url else resolve_servers(settings)
    if args.dlq_command == "list":
        return asyncio.run(_list(settings, args.count))
    return asyncio.run(_replay(settings, args.ids))


def add_dlq_parser(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser("dlq", help="list or replay entries of the dead-letter stream")
    dlq.set_defaults(handler=run_dlq)
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print dead letters, oldest first: id, group, source entry, event id, deliveries, error")
    listing.add_argument("--count", type=int, default=100, help="print at most this many (default 100)")
    replay = actions.add_parser("replay", help="append dead letters to the events stream again for the group that failed, then delete them")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids as printed by 'dlq list' (default: all)")
