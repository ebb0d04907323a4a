"""A minimal HTTP/1.1 listener for the probe paths of services that have no HTTP port of their own.

The ranker and the persister start it when ``RANKSTREAM_METRICS_PORT`` is set.
It answers ``GET`` on ``/metrics``, ``/healthz`` and ``/readyz`` with one
response per connection and 404 otherwise. Requests must arrive within
``READ_TIMEOUT_S``; headers beyond ``MAX_HEADER_BYTES`` are rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus

import structlog

from shared.probes import ProbeResponse, Probes

log = structlog.get_logger(__name__)

READ_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 8192


def parse_request_line(line: bytes) -> tuple[str, str] | None:
    """Return (method, path without query) of an HTTP/1.x request line, or None if it is malformed."""
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def encode_response(response: ProbeResponse) -> bytes:
    reason = HTTPStatus(response.status).phrase
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + response.body


def _text(status: int, text: str) -> ProbeResponse:
    return ProbeResponse(status, "text/plain; charset=utf-8", text.encode())


async def _respond(probes: Probes, reader: asyncio.StreamReader) -> ProbeResponse:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=READ_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        return _text(431, f"request headers exceed {MAX_HEADER_BYTES} bytes\n")
    request = parse_request_line(head.split(b"\r\n", 1)[0])
    if request is None:
        return _text(400, "malformed request line; send 'GET /metrics HTTP/1.1'\n")
    method, path = request
    if method != "GET":
        return _text(405, f"method {method} is not allowed; use GET\n")
    answer = await probes.answer(path)
    if answer is None:
        return _text(404, "not found; use /metrics, /healthz or /readyz\n")
    return answer


@contextlib.asynccontextmanager
async def serve_probes(probes: Probes, host: str, port: int | None) -> AsyncIterator[int | None]:
    """Serve the probe paths on ``host:port`` while the block runs; yield the bound port.

    ``port`` None serves nothing and yields None; 0 binds a free port.
    """
    if port is None:
        yield None
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await _respond(probes, reader)
            writer.write(encode_response(response))
            await asyncio.wait_for(writer.drain(), timeout=READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEADER_BYTES, reuse_address=True)
    bound_port = server.sockets[0].getsockname()[1]
    log.info("probe listener started", host=host, port=bound_port)
    try:
        yield bound_port
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout=5)
        log.info("probe listener stopped", port=bound_port)
