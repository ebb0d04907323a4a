"""The benchmark's HTTP client reads whole responses, in pieces or back to back, and reports a closed connection."""

from __future__ import annotations

import asyncio
import re

import pytest

from bench import http_load
from bench.http_load import Connection, HttpError, build_request, closed_loop


async def _serve(handle) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _request_once(response: bytes) -> tuple[int, bytes]:
    """Send one request to a server that writes ``response`` and keeps the connection open; return what the client read."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await reader.read()
        writer.close()

    server, port = await _serve(handle)
    async with server:
        connection = await Connection.open("127.0.0.1", port)
        try:
            return await connection.request(build_request("GET", "/"))
        finally:
            connection.close()


async def test_response_in_pieces_and_keep_alive() -> None:
    """A response whose head and body arrive in separate writes is read whole, and the connection serves the next request."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for body in (b'{"n":1}', b"second"):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 202 Accepted\r\nCONTENT-LENGTH: " + str(len(body)).encode() + b"\r\n")
            await writer.drain()
            writer.write(b"\r\n" + body[:3])
            await writer.drain()
            writer.write(body[3:])
            await writer.drain()
        writer.close()

    server, port = await _serve(handle)
    async with server:
        connection = await Connection.open("127.0.0.1", port)
        try:
            first = await connection.request(build_request("GET", "/a"))
            second = await connection.request(build_request("GET", "/b"))
        finally:
            connection.close()

    assert first == (202, b'{"n":1}')
    assert second == (202, b"second")


async def test_closed_connection_raises() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, port = await _serve(handle)
    async with server:
        connection = await Connection.open("127.0.0.1", port)
        try:
            with pytest.raises(HttpError, match="closed the connection"):
                await connection.request(build_request("GET", "/"))
        finally:
            connection.close()


async def test_closed_loop_counts_every_response() -> None:
    """Four connections send 50 requests in all; each response is counted once with its status."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            status = b"404 Not Found" if b" /missing " in head else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, port = await _serve(handle)
    async with server:
        results = await closed_loop(
            "127.0.0.1", port, lambda number: build_request("GET", "/missing" if number % 5 == 0 else "/"),
            concurrency=4, duration_s=30, max_requests=50,
        )

    assert results.statuses == {200: 40, 404: 10}
    assert results.errors == 0
    assert len(results.latencies_s) == 50


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nab", "Content-Length b'-1', not a whole number of bytes"),
        (b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nab", "does not start with an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", "chunked responses are not supported"),
    ],
)
async def test_malformed_responses_raise(response: bytes, message: str) -> None:
    with pytest.raises(HttpError, match=re.escape(message)):
        await _request_once(response)


async def test_response_without_length_has_empty_body() -> None:
    assert await _request_once(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"")


async def test_request_times_out_when_no_response_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    answered = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await answered.wait()
        writer.close()

    monkeypatch.setattr(http_load, "REQUEST_TIMEOUT_S", 0.2)
    server, port = await _serve(handle)
    async with server:
        connection = await Connection.open("127.0.0.1", port)
        try:
            with pytest.raises(TimeoutError):
                await connection.request(build_request("GET", "/"))
        finally:
            answered.set()
            connection.close()
