"""The audit log: every admin and key operation, as a PostgreSQL row and a structlog event.

An entry names the actor (``key:<id>`` for an HTTP caller, ``cli:<user>`` for
the command line), the action (such as ``key.create``), the target and the
outcome. Callers pass ids and names only, never a key's text or hash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
import structlog

log = structlog.get_logger(__name__)


class Outcome(enum.Enum):
    """The end of an audited call: ``allowed`` for an admin call past the key
    check, ``ok`` for a change that was made."""

    OK = "ok"
    ALLOWED = "allowed"
    DENIED = "denied"
    NOT_FOUND = "not_found"
    INVALID = "invalid"


async def record(
    connection: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    action: str,
    outcome: Outcome,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Insert one audit row and log it as ``audit``; return the row id.

    Run it on the connection of the operation's transaction, so the row
    commits or rolls back with the change it describes. The log event is
    written at insert time, so it also appears for a transaction that later
    rolls back.
    """
    details_json = msgspec.json.encode(dict(details or {})).decode()
    audit_id = await connection.fetchval(
        "INSERT INTO audit_log (actor, action, target, outcome, details) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
        actor, action, target, outcome.value, details_json,
    )
    log.info("audit", audit_id=audit_id, actor=actor, action=action, target=target, outcome=outcome.value, details=dict(details or {}))
    return audit_id
