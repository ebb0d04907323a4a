"""WebSocket fan-out benchmark: delivery latency and messages per second for N clients on one gateway process.

Usage: ``python bench/ws_fanout.py [--clients N ...] [--duration-s S] [--quick]``.
Without ``--clients`` it runs 1,000 and then 10,000 clients. Each run:

1. starts an embedded Valkey (or uses ``--redis-url``) and one gateway process,
2. connects N clients that each subscribe to the same board's top 10,
3. publishes rank changes the way the ranker does (score, seq counter, one
   pub/sub message) at ``--rate`` per second for ``--duration-s`` seconds,
4. measures, per client and update, the time from publishing to receiving it.

The clients are a small asyncio WebSocket client written for this script (no
per-message JSON parsing), all in this process, so the figures include the load
generator sharing the machine's cores with the gateway. The figures go into the
"WebSocket fan-out" section of docs/benchmarks.md and into
docs/benchmarks-fanout.json; other sections of the page are kept. Every loop is
bounded in count and time, and every process started here is stopped by its id.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import psutil  # noqa: E402
import redis.asyncio as redis  # noqa: E402

from shared.embedded import EmbeddedValkey, free_port  # noqa: E402
from shared.names import Names  # noqa: E402
from shared.schema import BoardUpdate, RankChange  # noqa: E402

BOARD = "pushups-weekly"
PERIOD = "2026-W01"
ATHLETES = 1000
CONNECT_CONCURRENCY = 100
CONNECT_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 10.0
SECTION_HEADING = "## WebSocket fan-out"
PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks-fanout.json"
SEQ_PATTERN = re.compile(rb'"seq":(\d+)')


# -- the gateway process ----------------------------------------------------------


def serve_gateway() -> None:
    """Run one gateway in this process (the ``--serve-gateway`` mode), boards from the file, no database."""
    from services.gateway.run import run_gateway
    from shared.lifecycle import run_until_stopped
    from shared.logs import configure_logging
    from shared.settings import Settings

    settings = Settings.from_env()
    configure_logging("warning", "json", service="gateway")
    run_until_stopped(lambda: run_gateway(settings))


def start_gateway(redis_url: str, namespace: str, port: int, clients: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "RANKSTREAM_REDIS_URL": redis_url,
        "RANKSTREAM_NAMESPACE": namespace,
        "RANKSTREAM_WS_PORT": str(port),
        "RANKSTREAM_BOARDS_FILE": str(ROOT / "deploy" / "boards.toml"),
        "RANKSTREAM_WS_MAX_CONNECTIONS_PER_IP": str(clients + 100),
        "RANKSTREAM_WS_IDLE_TIMEOUT_S": "600",
    }
    env.pop("RANKSTREAM_DATABASE_URL", None)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-gateway"], env=env, cwd=ROOT)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- a minimal WebSocket client ---------------------------------------------------


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """Encode one masked client frame (RFC 6455, section 5.2)."""
    mask = secrets.token_bytes(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big") if length else b""
    return header + mask + masked


@dataclass
class Counters:
    """Counts of what the clients of one run received."""

    messages: int = 0
    subscribed: int = 0
    closed: int = 0
    connect_retries: int = 0


class BenchClient(asyncio.Protocol):
    """Handshake, subscribe after the welcome, answer pings, record each update's seq and arrival time."""

    def __init__(self, port: int, counters: Counters, opened: asyncio.Future) -> None:
        self.port = port
        self.counters = counters
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.welcomed = False
        self.close_frame: bytes | None = None
        # (seq, arrival time) of each update, in arrival order.
        self.arrivals: list[tuple[int, float]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[: end + 4]
            if b" 101 " not in status_line:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(status_line.decode(errors="replace")))
                return
            self.upgraded = True
        self._read_frames()

    def _read_frames(self) -> None:
        now = time.monotonic()
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._on_frame(opcode, payload, now)

    def _on_frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x9:
            self.transport.write(client_frame(payload, 0xA))
            return
        if opcode == 0x8:
            self.counters.closed += 1
            self.close_frame = payload
            return
        if not self.welcomed:
            self.welcomed = True
            subscribe = {"type": "subscribe", "id": "top", "board": BOARD, "period": PERIOD, "top": 10}
            self.transport.write(client_frame(json.dumps(subscribe).encode()))
            return
        self.counters.messages += 1
        if payload.startswith(b'{"type":"snapshot"'):
            self.counters.subscribed += 1
            if not self.opened.done():
                self.opened.set_result(None)
            return
        match = SEQ_PATTERN.search(payload)
        if match is not None:
            self.arrivals.append((int(match.group(1)), now))

    def latest_seq(self) -> int:
        return self.arrivals[-1][0] if self.arrivals else 0

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            code = int.from_bytes(self.close_frame[:2], "big") if self.close_frame else None
            reason = self.close_frame[2:].decode(errors="replace") if self.close_frame else ""
            self.opened.set_exception(ConnectionError(f"connection lost before the snapshot: {exc}, close code {code} {reason}"))


async def connect_clients(port: int, count: int, counters: Counters) -> list[BenchClient]:
    """Open ``count`` subscribed clients, at most CONNECT_CONCURRENCY handshakes at a time."""
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[BenchClient] = []

    async def one() -> None:
        # Like real clients, retry a connection the gateway dropped during its
        # opening handshake (websockets' open_timeout) while it was busy.
        async with semaphore:
            for attempt in range(CONNECT_ATTEMPTS):
                opened = loop.create_future()
                transport, protocol = await loop.create_connection(lambda: BenchClient(port, counters, opened), "127.0.0.1", port)
                try:
                    await asyncio.wait_for(opened, 30)
                except (ConnectionError, TimeoutError):
                    transport.abort()
                    if attempt == CONNECT_ATTEMPTS - 1:
                        raise
                    counters.connect_retries += 1
                    continue
                clients.append(protocol)
                return

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), CONNECT_TIMEOUT_S)
    return clients


def delivery_latencies_ms(clients: list[BenchClient], published: dict[int, float]) -> list[float]:
    """Return, for every client and published seq, the time until a message with that seq or a later one arrived.

    A conflated message covers every seq up to its own, so this counts the wait
    for the next push slot as part of the latency. Pairs that never arrived are left out.
    """
    latencies = []
    ordered = sorted(published.items())
    for client in clients:
        position = 0
        for seq, arrival in client.arrivals:
            while position < len(ordered) and ordered[position][0] <= seq:
                latencies.append((arrival - ordered[position][1]) * 1000)
                position += 1
    return latencies


# -- one run ----------------------------------------------------------------------


async def publish_updates(client: redis.Redis, names: Names, rate: float, duration_s: float) -> dict[int, float]:
    """Change one athlete's score per tick and publish it as the ranker would; return publish time by seq."""
    published: dict[int, float] = {}
    scores = names.board_scores(BOARD, PERIOD)
    seq_key = names.board_seq(BOARD, PERIOD)
    interval_s = 1.0 / rate
    started = time.monotonic()
    count = int(rate * duration_s)
    for index in range(count):
        # Pacing the load generator, bounded by count.
        delay_s = started + index * interval_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        user = f"u{index % ATHLETES}"
        new_score = await client.zincrby(scores, 1, user)
        seq = await client.incr(seq_key)
        change = RankChange(user_id=user, score=int(new_score), rank=1, old_score=int(new_score) - 1, old_rank=1)
        message = msgspec.json.encode(BoardUpdate(board=BOARD, period=PERIOD, seq=seq, changes=[change]))
        published[seq] = time.monotonic()
        await client.publish(names.rank_changes_channel, message)
    return published


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_once(redis_url: str, clients: int, rate: float, duration_s: float) -> dict:
    """Measure one client count; return its figures."""
    namespace = f"bench{secrets.token_hex(3)}"
    names = Names(namespace)
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    gateway = start_gateway(redis_url, namespace, port, clients)
    clients_connected: list[BenchClient] = []
    try:
        # A full board, so each top-10 message has real entries.
        await client.zadd(names.board_scores(BOARD, PERIOD), {f"u{i}": i for i in range(ATHLETES)})
        deadline = time.monotonic() + 30
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not start listening within 30 s") from None
                await asyncio.sleep(0.1)

        counters = Counters()
        connect_started = time.monotonic()
        clients_connected = await connect_clients(port, clients, counters)
        connect_s = time.monotonic() - connect_started
        gateway_process = psutil.Process(gateway.pid)
        gateway_process.cpu_percent(None)

        messages_before = counters.messages
        published = await publish_updates(client, names, rate, duration_s)
        last_seq = max(published)
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < drain_deadline and any(c.latest_seq() < last_seq for c in clients_connected):
            await asyncio.sleep(0.05)
        window_s = time.monotonic() - min(published.values())
        gateway_cpu = gateway_process.cpu_percent(None) / 100
        gateway_rss = gateway_process.memory_info().rss

        latencies_ms = delivery_latencies_ms(clients_connected, published)
        messages = counters.messages - messages_before
        up_to_date = sum(1 for c in clients_connected if c.latest_seq() >= last_seq)
        return {
            "clients": clients,
            "updates_published": len(published),
            "publish_rate_per_s": rate,
            "messages_received": messages,
            "clients_up_to_date": up_to_date,
            "messages_per_s": round(messages / window_s, 1),
            "latency_ms_p50": round(statistics.median(latencies_ms), 1),
            "latency_ms_p95": round(percentile(latencies_ms, 0.95), 1),
            "latency_ms_p99": round(percentile(latencies_ms, 0.99), 1),
            "latency_ms_max": round(max(latencies_ms), 1),
            "connect_s": round(connect_s, 1),
            "connect_retries": counters.connect_retries,
            "gateway_cpu_cores": round(gateway_cpu, 2),
            "gateway_rss_mb": round(gateway_rss / 2**20, 1),
            "closed_by_server": counters.closed,
        }
    finally:
        for bench_client in clients_connected:
            if bench_client.transport is not None:
                bench_client.transport.abort()
        stop_process(gateway)
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.unlink(key)
        await client.aclose()


# -- the page ---------------------------------------------------------------------


def section(results: list[dict], machine: str, command: str) -> str:
    header = (
        "| clients | updates published | clients with the last update | messages/s | p50 ms | p95 ms | p99 ms | max ms | connect s | gateway CPU (cores) | gateway RSS MB |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    rows = "".join(
        f"| {r['clients']:,} | {r['updates_published']} at {r['publish_rate_per_s']:g}/s | {r['clients_up_to_date']:,} "
        f"| {r['messages_per_s']:,.0f} | {r['latency_ms_p50']} | {r['latency_ms_p95']} | {r['latency_ms_p99']} | {r['latency_ms_max']} "
        f"| {r['connect_s']} ({r['connect_retries']} retried) | {r['gateway_cpu_cores']} | {r['gateway_rss_mb']} |\n"
        for r in sorted(results, key=lambda r: r["clients"])
    )
    return (
        f"{SECTION_HEADING}\n\n"
        "Delivery from one published rank change to every connected client, for one gateway process. Each client "
        "subscribes to the same board's top 10, so every update is rendered and encoded once and written to all of "
        "them. Latency runs from the publish on Valkey to the client reading the first message that includes the "
        "change (that seq or a later one, since a conflated message carries every earlier change), for every client "
        "and every published change. Messages/s counts frames the clients read during the run. The clients are one "
        "asyncio process on the same machine, so they compete with the gateway, Valkey and the publisher for the "
        "machine's cores; where the gateway's CPU stays well below one core, the clients' process is the limit.\n\n"
        f"{header}{rows}\n"
        f"Machine: {machine}. Command: `{command}`. Raw figures: `docs/benchmarks-fanout.json`.\n"
    )


def write_page(results: list[dict], machine: str, command: str) -> None:
    """Replace this script's section of docs/benchmarks.md, keeping every other section."""
    existing = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n"
    parts = re.split(r"(?m)^(?=## )", existing)
    kept = [part for part in parts if not part.startswith(SECTION_HEADING)]
    text = "".join(part.rstrip() + "\n\n" for part in kept).rstrip() + "\n\n" + section(results, machine, command)
    PAGE.write_text(text)


def machine_text() -> str:
    cpu = platform.processor() or platform.machine()
    memory_gb = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        raise SystemExit(f"the open-file limit is {soft}, below the {needed} this run needs; raise it with 'ulimit -n {needed}'")


async def main_async(args: argparse.Namespace) -> list[dict]:
    valkey = None
    redis_url = args.redis_url
    if redis_url is None:
        valkey = EmbeddedValkey(Path(tempfile.mkdtemp(prefix="rankstream-fanout-")) / "valkey")
        redis_url = valkey.start()
    try:
        results = []
        for clients in args.clients:
            print(f"fan-out: {clients} clients, {args.rate:g} updates/s for {args.duration_s:g} s", flush=True)
            result = await run_once(redis_url, clients, args.rate, args.duration_s)
            print(json.dumps(result), flush=True)
            results.append(result)
        return results
    finally:
        if valkey is not None:
            valkey.stop()


def main() -> None:
    if "--serve-gateway" in sys.argv:
        serve_gateway()
        return
    parser = argparse.ArgumentParser(description="Measure WebSocket delivery latency and messages per second on one gateway process.")
    parser.add_argument("--clients", type=int, action="append", help="connected clients (repeatable; default 1000 and 10000)")
    parser.add_argument("--duration-s", type=float, default=None, help="seconds of publishing per run (default 15, 5 with --quick)")
    parser.add_argument("--rate", type=float, default=5.0, help="rank changes published per second (default 5)")
    parser.add_argument("--redis-url", help="use this Valkey/Redis instead of starting an embedded one")
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 clients for 5 s, for development; not for publishing")
    parser.add_argument("--no-write", action="store_true", help="print the figures without writing docs/benchmarks.md")
    args = parser.parse_args()
    if args.clients is None:
        args.clients = [100, 1000] if args.quick else [1000, 10_000]
    if args.duration_s is None:
        args.duration_s = 5.0 if args.quick else 15.0
    if not 0 < args.duration_s <= 300:
        parser.error("--duration-s must be between 0 and 300")
    if not 0 < args.rate <= 100:
        parser.error("--rate must be between 0 and 100")
    if any(not 1 <= clients <= 50_000 for clients in args.clients):
        parser.error("--clients must be between 1 and 50000")
    raise_open_file_limit(max(args.clients) + 1024)

    try:
        import uvloop
    except ImportError:
        results = asyncio.run(main_async(args))
    else:
        results = uvloop.run(main_async(args))
    if args.no_write or args.quick:
        return
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    by_clients = {entry["clients"]: entry for entry in previous.get("runs", [])}
    by_clients.update({entry["clients"]: entry for entry in results})
    runs = sorted(by_clients.values(), key=lambda entry: entry["clients"])
    machine = machine_text()
    command = "python bench/ws_fanout.py " + " ".join(f"--clients {c}" for c in args.clients) + f" --duration-s {args.duration_s:g} --rate {args.rate:g}"
    RESULTS.write_text(json.dumps({"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine, "runs": runs}, indent=2) + "\n")
    write_page(runs, machine, command)
    print(f"wrote {PAGE.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
