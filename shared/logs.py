"""structlog setup shared by every service and command.

Level policy: ERROR for failures we could not handle, WARNING for degraded but
continuing work (a retry, a dropped client), INFO for lifecycle (start, listen,
stop, connection opened or closed), DEBUG for per-message detail. Output is
JSON when stderr is not a terminal and coloured text when it is. Records from
the standard library (aiohttp, websockets, asyncpg) go through the same
processors.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", log_format: str = "auto", service: str | None = None) -> None:
    """Configure structlog and the standard library logging for one process."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared_processors: list = [
        structlog.contextvars.merge_contextvars,
        _merge_unit_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service is not None:
        # A processor, not a context variable: a request or connection starts
        # its own log context, which would drop it.
        shared_processors.append(_ServiceName(service))
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        # filter_by_level drops records below the level before any processor runs, so
        # per-request debug and info calls cost little when the level is warning.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # aiohttp's access log repeats what our request log records.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _ServiceName:
    """Add ``service`` to every record that does not name one."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(self, _logger: object, _method: str, event_dict: dict) -> dict:
        event_dict.setdefault("service", self.service)
        return event_dict


# The fields of the unit of work (an HTTP request) that the current task runs.
# One variable holding a dict: starting a unit is one set() instead of clearing
# and binding structlog's context variables one by one, which showed in the
# instruction count of every ingest request.
_unit_fields: ContextVar[dict[str, object] | None] = ContextVar("rankstream_unit_fields", default=None)


def start_unit_of_work(**fields: object) -> None:
    """Make ``fields`` the log fields of the unit of work the current task starts, replacing those of its previous one."""
    _unit_fields.set(fields)


def bind_to_unit_of_work(**fields: object) -> None:
    """Add ``fields`` to the current unit of work's log fields; they end with it.

    The fields are copied, not changed in place. A task or thread started
    earlier in the unit refers to the same dict, so changing it would add
    these fields to the task's records, or change the dict while it logs.
    """
    _unit_fields.set({**(_unit_fields.get() or {}), **fields})


def _merge_unit_fields(_logger: object, _method: str, event_dict: dict) -> dict:
    """Add the current unit of work's fields to a record, without replacing the record's own."""
    fields = _unit_fields.get()
    if fields:
        for name, value in fields.items():
            event_dict.setdefault(name, value)
    return event_dict
