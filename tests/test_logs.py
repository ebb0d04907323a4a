"""Log records name their service, also inside a request that cleared the context."""

from __future__ import annotations

import io
import json
import logging

import structlog

from shared.logs import configure_logging


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
