"""Numbers and times in activity XML, read strictly. No I/O here."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from services.ingest.activities.model import ActivityFileError


def invalid_value(format_name: str, element: str, text: str | None, expected: str) -> ActivityFileError:
    return ActivityFileError(
        f"invalid-{format_name.lower()}", f"Invalid {format_name} file",
        f"<{element}> holds {text!r}; expected {expected}",
    )


def parse_number(format_name: str, element: str, text: str | None) -> float:
    """Return the finite number in ``text``; raise ActivityFileError naming ``element`` otherwise."""
    try:
        value = float((text or "").strip())
    except ValueError:
        raise invalid_value(format_name, element, text, "a number") from None
    if not math.isfinite(value):
        raise invalid_value(format_name, element, text, "a finite number")
    return value


def as_utc(instant: datetime) -> datetime:
    """Return ``instant`` in UTC, reading a time without an offset as UTC, as GPX and TCX specify."""
    if instant.tzinfo is None:
        return instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc)


def parse_time(format_name: str, element: str, text: str | None) -> datetime:
    """Return the ISO 8601 time in ``text`` in UTC; raise ActivityFileError naming ``element`` otherwise."""
    try:
        return as_utc(datetime.fromisoformat((text or "").strip()))
    except ValueError:
        raise invalid_value(format_name, element, text, "an ISO 8601 time such as 2026-12-04T07:30:00Z") from None
