"""Log records name their service and carry the fields of the unit of work they belong to."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import structlog

from shared.logs import bind_to_unit_of_work, configure_logging, start_unit_of_work


async def test_records_keep_service_name_after_context_cleared() -> None:
    """A record made after clear_contextvars, as each gateway connection does first, still has the service and the bound id."""
    configure_logging("info", "json", service="gateway")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    try:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(connection_id="c-1")
        structlog.get_logger("tests.logs").info("connection opened", peer="127.0.0.1")
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("warning", "console")
    record = json.loads(stream.getvalue())

    assert {name: record[name] for name in ("event", "service", "connection_id", "peer", "level")} == {
        "event": "connection opened", "service": "gateway", "connection_id": "c-1", "peer": "127.0.0.1", "level": "info",
    }


async def test_unit_of_work_fields_end_with_the_unit() -> None:
    """Fields bound during one request are on its records and gone from the next request's, which has its own id."""
    configure_logging("info", "json", service="ingest")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    logger = structlog.get_logger("tests.logs")
    try:
        start_unit_of_work(request_id="r-1", method="POST")
        bind_to_unit_of_work(user_id="ada")
        logger.info("file decoded", request_id="own-id")
        start_unit_of_work(request_id="r-2", method="GET")
        logger.info("board read")
    finally:
        start_unit_of_work()
        configure_logging("warning", "console")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())

    # A record's own field wins over the unit's.
    assert {name: first.get(name) for name in ("event", "request_id", "method", "user_id")} == {
        "event": "file decoded", "request_id": "own-id", "method": "POST", "user_id": "ada",
    }
    assert {name: second.get(name) for name in ("event", "request_id", "method", "user_id")} == {
        "event": "board read", "request_id": "r-2", "method": "GET", "user_id": None,
    }


async def test_task_started_earlier_keeps_its_fields() -> None:
    """A field bound after a task started is on the unit's later records, not on the task's."""
    configure_logging("info", "json", service="ingest")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    logger = structlog.get_logger("tests.logs")
    release = asyncio.Event()

    async def child() -> None:
        await release.wait()
        logger.info("child logged")

    try:
        start_unit_of_work(request_id="r-1")
        task = asyncio.create_task(child())
        bind_to_unit_of_work(user_id="ada")
        release.set()
        await task
        logger.info("parent logged")
    finally:
        start_unit_of_work()
        configure_logging("warning", "console")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]

    assert [(record["event"], record["request_id"], record.get("user_id")) for record in records] == [
        ("child logged", "r-1", None),
        ("parent logged", "r-1", "ada"),
    ]
