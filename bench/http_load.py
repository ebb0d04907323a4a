"""An asyncio HTTP/1.1 load generator: keep-alive connections, pre-built requests, per-request latency.

It speaks only what the benchmark needs (Content-Length bodies, no chunked
encoding, no redirects), which keeps its own cost per request low enough that
the server, not the generator, is what the numbers measure on a small machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0


class HttpError(RuntimeError):
    """The server sent something this client cannot parse, or closed the connection."""


@dataclass
class Results:
    """Latencies in seconds of completed requests, and counts by status code."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    started_s: float = 0.0
    finished_s: float = 0.0

    def record(self, status: int, latency_s: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies_s.append(latency_s)

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_s - self.started_s, 1e-9)

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)


class _ResponseReader(asyncio.Protocol):
    """Collects bytes from the socket and completes the waiting request's future once its whole response is in.

    A protocol costs the client far less per request than a StreamReader with
    a timeout around each read, and on a two-core machine every microsecond
    the generator spends is one the server under test does not get.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiting is None or self.waiting.done():
            return
        try:
            response = self._take_response()
        except HttpError as error:
            self.waiting.set_exception(error)
            return
        if response is not None:
            self.waiting.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or HttpError("the server closed the connection")
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(self.lost)

    def _take_response(self) -> tuple[int, bytes] | None:
        """Remove one whole response from the buffer and return its status and body, or None while it is incomplete."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.buffer[:head_end]).lower()
        status_text = head[9:12]
        if not head.startswith(b"http/1.") or len(status_text) != 3 or not status_text.isdigit():
            raise HttpError(f"the response does not start with an HTTP/1.x status line: {head[:40]!r}")
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            if b"chunked" in head:
                raise HttpError("chunked responses are not supported by the benchmark client")
            length = 0
        else:
            line_end = head.find(b"\r\n", marker + 2)
            length_text = head[marker + 17 : line_end if line_end >= 0 else len(head)].strip()
            if not length_text.isdigit():
                raise HttpError(f"the response has Content-Length {length_text!r}, not a whole number of bytes")
            length = int(length_text)
        body_start = head_end + 4
        if len(self.buffer) < body_start + length:
            return None
        body = bytes(self.buffer[body_start : body_start + length])
        del self.buffer[: body_start + length]
        return int(status_text), body


class Connection:
    """One keep-alive connection that sends a request and reads its whole response."""

    def __init__(self, transport: asyncio.Transport, reader: _ResponseReader) -> None:
        self.transport = transport
        self.reader = reader

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        transport, reader = await asyncio.wait_for(loop.create_connection(_ResponseReader, host, port), CONNECT_TIMEOUT_S)
        return cls(transport, reader)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one full request; return the status code and the body."""
        reader = self.reader
        if reader.lost is not None:
            raise reader.lost
        waiting = asyncio.get_running_loop().create_future()
        reader.waiting = waiting
        self.transport.write(raw)
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await waiting

    def close(self) -> None:
        self.transport.close()


def build_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed_loop(
    host: str, port: int, make_request: Callable[[int], bytes], *, concurrency: int, duration_s: float, max_requests: int
) -> Results:
    """Run ``concurrency`` workers that each send the next request as soon as the previous response arrived.

    Stops after ``duration_s`` or ``max_requests`` requests, whichever comes first.
    ``make_request(n)`` builds request number ``n``.
    """
    results = Results()
    counter = iter(range(max_requests))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def worker() -> None:
        connection = await Connection.open(host, port)
        try:
            for number in counter:
                if loop.time() >= deadline:
                    return
                raw = make_request(number)
                sent = time.perf_counter()
                try:
                    status, _body = await connection.request(raw)
                except (HttpError, OSError, asyncio.IncompleteReadError, TimeoutError):
                    results.errors += 1
                    connection.close()
                    connection = await Connection.open(host, port)
                    continue
                results.record(status, time.perf_counter() - sent)
        finally:
            connection.close()

    results.started_s = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    results.finished_s = time.perf_counter()
    return results


class ConnectionPool:
    """Connections for open-loop sending: take a free one or open another, up to ``max_size``."""

    def __init__(self, host: str, port: int, max_size: int) -> None:
        self.host = host
        self.port = port
        self.max_size = max_size
        self.free: list[Connection] = []
        self.opened = 0
        self.available = asyncio.Condition()

    async def acquire(self) -> Connection:
        async with self.available:
            while not self.free and self.opened >= self.max_size:
                await self.available.wait()
            if self.free:
                return self.free.pop()
            self.opened += 1
        try:
            return await Connection.open(self.host, self.port)
        except BaseException:
            async with self.available:
                self.opened -= 1
                self.available.notify()
            raise

    async def release(self, connection: Connection | None) -> None:
        async with self.available:
            if connection is None:
                self.opened -= 1
            else:
                self.free.append(connection)
            self.available.notify()

    def close(self) -> None:
        for connection in self.free:
            connection.close()
        self.free.clear()


async def send_one(pool: ConnectionPool, raw: bytes, results: Results) -> None:
    """Send one request on a pooled connection and record it; a failed connection is dropped."""
    connection = await pool.acquire()
    sent = time.perf_counter()
    try:
        status, _body = await connection.request(raw)
    except (HttpError, OSError, asyncio.IncompleteReadError, TimeoutError):
        results.errors += 1
        connection.close()
        await pool.release(None)
        return
    results.record(status, time.perf_counter() - sent)
    await pool.release(connection)
