"""API keys: creation, hashing and lookup. Only a SHA-256 hash of a key is stored.

A key is ``rsk_`` followed by 43 URL-safe characters (32 random bytes), so a
hash lookup needs no slow KDF: the key space is too large to guess. Lookup is
by hash, so the database compares hashes, never key text; the hash found is
compared again with ``hmac.compare_digest``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from datetime import datetime

import asyncpg
import msgspec

KEY_PREFIX = "rsk_"
MAX_KEY_NAME_CHARACTERS = 64
# The same id rule as event user ids, so a device key can name any athlete.
_USER_ID = re.compile(r"^[A-Za-z0-9._:@~+-]{1,64}$")


class KeyKind(enum.Enum):
    """Permission level of a key: post for one athlete, post for anyone, or administer."""

    DEVICE = "device"
    SERVER = "server"
    ADMIN = "admin"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A stored key's metadata; never the key itself."""

    id: int
    name: str
    kind: KeyKind
    user_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key_text() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class InvalidKeyRequest(ValueError):
    """A key cannot be created with these arguments; ``field`` names the bad one."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def check_new_key(name: str, kind: KeyKind, user_id: str | None) -> None:
    """Raise InvalidKeyRequest naming the bad argument of a key about to be created."""
    if not name.strip() or len(name) > MAX_KEY_NAME_CHARACTERS or not name.isprintable():
        raise InvalidKeyRequest("name", f"name must be 1 to {MAX_KEY_NAME_CHARACTERS} printable characters")
    if (kind is KeyKind.DEVICE) != (user_id is not None):
        raise InvalidKeyRequest("user_id", "a device key needs a user id, and only a device key takes one")
    if user_id is not None and not _USER_ID.match(user_id):
        raise InvalidKeyRequest("user_id", "user id must be 1 to 64 characters from A-Z, a-z, 0-9 and . _ : @ ~ + -")


def _row_to_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        kind=KeyKind(row["kind"]),
        user_id=row["user_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


_COLUMNS = "id, name, kind, user_id, created_at, expires_at, revoked_at"


async def create_key(
    connection: asyncpg.Connection,
    name: str,
    kind: KeyKind = KeyKind.SERVER,
    user_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key's hash; return its metadata and the key text, which is shown once.

    Raises InvalidKeyRequest (a ValueError) for a bad name or user id, or a
    user id on a non-device key.
    """
    check_new_key(name, kind, user_id)
    text = new_key_text()
    row = await connection.fetchrow(
        f"INSERT INTO api_keys (name, kind, user_id, key_hash, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
        name, kind.value, user_id, hash_key(text), expires_at,
    )
    return _row_to_key(row), text


async def find_key(connection: asyncpg.Connection | asyncpg.Pool, key: str) -> ApiKey | None:
    """Return the metadata of ``key``, or None if no key has its hash."""
    digest = hash_key(key)
    row = await connection.fetchrow(f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_hash = $1", digest)
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
        return None
    return _row_to_key(row)


async def get_key(connection: asyncpg.Connection | asyncpg.Pool, key_id: int) -> ApiKey | None:
    row = await connection.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return None if row is None else _row_to_key(row)


async def list_keys(connection: asyncpg.Connection | asyncpg.Pool) -> list[ApiKey]:
    return [_row_to_key(row) for row in await connection.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")]


async def revoke_key(connection: asyncpg.Connection, key_id: int) -> bool:
    """Mark a key revoked; return False if no unrevoked key has that id."""
    status = await connection.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status == "UPDATE 1"
