"""The ``rankstream keys`` actions: create, list and revoke keys, each with an audit row."""

from __future__ import annotations

import getpass
from datetime import datetime

import asyncpg

from shared import audit
from shared.api_keys import ApiKey, InvalidKeyRequest, KeyKind, create_key, list_keys, revoke_key


def cli_actor() -> str:
    """Name the operator running the command, as ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        # getuser raises when no login name is set and the uid has no passwd entry.
        return "cli:unknown"


async def create_audited(
    connection: asyncpg.Connection, name: str, kind: KeyKind, user_id: str | None, expires_at: datetime | None
) -> tuple[ApiKey, str]:
    """Create a key and its audit row in one transaction; raise InvalidKeyRequest for bad arguments."""
    try:
        async with connection.transaction():
            key, text = await create_key(connection, name, kind, user_id, expires_at)
            await audit.record(connection, cli_actor(), "key.create", audit.Outcome.OK, target=f"key:{key.id}", details={"kind": kind.value, "name": name})
    except InvalidKeyRequest as error:
        # Outside the rolled-back transaction, so the rejected attempt stays on record.
        await audit.record(connection, cli_actor(), "key.create", audit.Outcome.INVALID, details={"kind": kind.value, "field": error.field})
        raise
    return key, text


async def list_audited(connection: asyncpg.Connection) -> list[ApiKey]:
    keys = await list_keys(connection)
    await audit.record(connection, cli_actor(), "key.list", audit.Outcome.OK, details={"count": len(keys)})
    return keys


async def revoke_audited(connection: asyncpg.Connection, key_id: int) -> bool:
    """Revoke a key and write its audit row in one transaction; return False if no active key has the id."""
    async with connection.transaction():
        revoked = await revoke_key(connection, key_id)
        outcome = audit.Outcome.OK if revoked else audit.Outcome.NOT_FOUND
        await audit.record(connection, cli_actor(), "key.revoke", outcome, target=f"key:{key_id}")
    return revoked
