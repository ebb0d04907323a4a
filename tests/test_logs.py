"""Log records name their service and carry the fields of the unit of work they belong to."""

from __future__ import annotations

import io
import json
import logging

import structlog

from shared.logs import bind_to_unit_of_work, configure_logging, start_unit_of_work


async def test_request_logs_keep_service_name() -> None:
    """A record made after clear_contextvars, as each request does first, still has the service and the request id."""
    configure_logging("info", "json", service="ingest")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    try:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id="r-1")
        structlog.get_logger("tests.logs").info("request handled", status=202)
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("warning", "console")
    record = json.loads(stream.getvalue())

    assert {name: record[name] for name in ("event", "service", "request_id", "status", "level")} == {
        "event": "request handled", "service": "ingest", "request_id": "r-1", "status": 202, "level": "info",
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
