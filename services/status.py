"""``rankstream status``: consumer groups, stream, dead letters, Redis memory and board periods at a glance.

Everything is read from Redis with read-only commands (XINFO, XLEN,
XREVRANGE, INFO, SCAN, ZCARD), so it is safe to run against production.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import msgspec
import redis.asyncio as redis

from shared.metrics import RedisSnapshot, policy_evicts_stream_keys
from shared.names import Names
from shared.redis_client import connect_redis
from shared.redis_stats import read_snapshot
from shared.settings import Settings

# Dead letters are counted per group over at most this many of the newest entries,
# so a huge dead-letter stream cannot make the command slow.
DEAD_LETTER_SCAN_LIMIT = 10_000
SCAN_COUNT = 1000


@dataclass(frozen=True)
class BoardPeriod:
    board: str
    period: str
    athletes: int


@dataclass(frozen=True)
class StatusReport:
    namespace: str
    snapshot: RedisSnapshot
    dead_letters_by_group: dict[str, int]
    dead_letters_counted: int
    board_periods: list[BoardPeriod]


def board_key_pattern(names: Names) -> re.Pattern[str]:
    """Match a board period's scores key and capture its board and period (periods contain no colon)."""
    return re.compile(rf"^{re.escape(names.namespace)}:\{{board:(?P<board>.+):(?P<period>[^:]+)\}}:scores$")


async def count_dead_letters(client: redis.Redis, names: Names, limit: int = DEAD_LETTER_SCAN_LIMIT) -> tuple[dict[str, int], int]:
    """Return dead letters per group among the newest ``limit`` entries, and how many entries were counted."""
    entries = await client.xrevrange(names.dead_letter_stream, count=limit)
    by_group: dict[str, int] = {}
    for _entry_id, fields in entries:
        group = (fields.get(b"group") or b"unknown").decode()
        by_group[group] = by_group.get(group, 0) + 1
    return by_group, len(entries)


async def read_board_periods(client: redis.Redis, names: Names) -> list[BoardPeriod]:
    """Find every board period's scores key with SCAN and count its athletes."""
    pattern = board_key_pattern(names)
    keys = [key.decode() async for key in client.scan_iter(match=f"{names.namespace}:{{board:*}}:scores", count=SCAN_COUNT)]
    matched = [(key, pattern.match(key)) for key in keys]
    matched = [(key, match) for key, match in matched if match is not None]
    async with client.pipeline(transaction=False) as pipe:
        for key, _match in matched:
            pipe.zcard(key)
        counts = await pipe.execute() if matched else []
    periods = [
        BoardPeriod(board=match.group("board"), period=match.group("period"), athletes=int(count))
        for (_key, match), count in zip(matched, counts, strict=True)
    ]
    return sorted(periods, key=lambda item: (item.board, item.period))


async def collect_status(client: redis.Redis, names: Names) -> StatusReport:
    snapshot = await read_snapshot(client, names)
    by_group, counted = await count_dead_letters(client, names)
    return StatusReport(
        namespace=names.namespace,
        snapshot=snapshot,
        dead_letters_by_group=by_group,
        dead_letters_counted=counted,
        board_periods=await read_board_periods(client, names),
    )


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def _table(header: list[str], rows: list[list[str]], first_number_column: int) -> list[str]:
    """Align text columns left and the columns from ``first_number_column`` on right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i >= first_number_column else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_status(report: StatusReport) -> str:
    """Return the report as aligned plain text for a terminal."""
    snapshot = report.snapshot
    lines = [f"namespace {report.namespace}"]
    lines.append(f"events stream: {snapshot.stream_length_entries} entries; dead-letter stream: {snapshot.dead_letter_length_entries} entries")
    lines.append("")

    if snapshot.groups:
        rows = [
            [
                group.name,
                str(group.consumers),
                str(group.pending_entries),
                "n/a" if group.lag_entries is None else str(group.lag_entries),
                str(report.dead_letters_by_group.get(group.name, 0)),
            ]
            for group in snapshot.groups
        ]
        lines += _table(["group", "consumers", "pending", "lag", "dead letters"], rows, 1)
    else:
        lines.append("no consumer groups yet (start a ranker or a persister)")
    if report.dead_letters_counted < snapshot.dead_letter_length_entries:
        lines.append(f"dead letters counted over the newest {report.dead_letters_counted} entries only")
    lines.append("")

    memory = snapshot.memory
    if memory is not None:
        limit = _mib(memory.maxmemory_bytes) if memory.maxmemory_bytes else "no limit"
        lines.append(
            f"redis memory: used {_mib(memory.used_memory_bytes)}, maxmemory {limit}, "
            f"fragmentation {memory.fragmentation_ratio:.2f}, evicted keys {memory.evicted_keys}, "
            f"policy {memory.maxmemory_policy or 'unknown'}"
        )
        if policy_evicts_stream_keys(memory.maxmemory_policy):
            lines.append("WARNING: this maxmemory-policy may evict the events stream and board keys; use noeviction")
        lines.append("")

    if report.board_periods:
        rows = [[item.board, item.period, str(item.athletes)] for item in report.board_periods]
        lines += _table(["board", "period", "athletes"], rows, 2)
    else:
        lines.append("no board periods with scores yet")
    return "\n".join(lines)


def status_json(report: StatusReport) -> bytes:
    return msgspec.json.encode(asdict(report))


async def run_status(settings: Settings, *, as_json: bool = False) -> int:
    """Print the status of the deployment ``settings`` points at; return the exit code."""
    assert settings.redis_url is not None
    client = connect_redis(settings.redis_url)
    try:
        report = await collect_status(client, Names(settings.namespace))
    finally:
        await client.aclose()
    print(status_json(report).decode() if as_json else render_status(report))
    return 0
