"""Bearer-key authentication and per-kind permissions, with a short cache so revocation takes effect within seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg

from shared.api_keys import ApiKey, KeyKind, find_key, hash_key

# Bounds the cache so a flood of random keys cannot grow memory without limit.
MAX_CACHED_KEYS = 10_000
# Real keys are 47 characters; anything much longer is rejected before hashing.
MAX_KEY_CHARACTERS = 256


class AuthError(Exception):
    """A request is not allowed; ``status`` is 401 or 403."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def bearer_token(header: str | None) -> str:
    """Return the key of an ``Authorization: Bearer`` header; raise AuthError (401) otherwise."""
    if not header:
        raise AuthError(401, "missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <key>'")
    if len(token.strip()) > MAX_KEY_CHARACTERS:
        raise AuthError(401, "the API key is not valid; create one with 'rankstream keys create'")
    return token.strip()


def require_poster(key: ApiKey) -> None:
    """Raise AuthError (403) unless ``key`` may post events: device and server keys may, admin keys may not."""
    if key.kind is KeyKind.ADMIN:
        raise AuthError(403, "admin keys manage Rankstream and cannot post events; post with a server or device key")


def require_admin(key: ApiKey) -> None:
    """Raise AuthError (403) unless ``key`` is an admin key."""
    if key.kind is not KeyKind.ADMIN:
        raise AuthError(403, f"this endpoint needs an admin key, and this is a {key.kind.value} key")


class Authenticator:
    """Look keys up by hash in PostgreSQL, caching each result for ``cache_ttl_s``."""

    def __init__(self, pool: asyncpg.Pool, cache_ttl_s: float, clock: Callable[[], datetime]) -> None:
        self.pool = pool
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cache: dict[bytes, tuple[float, ApiKey]] = {}
        # Unknown keys are cached apart, so a flood of random keys clears only
        # this map and never pushes real keys out of the cache.
        self._unknown: dict[bytes, float] = {}
        # Lookups in progress by key hash. When a cached key expires under load,
        # every request then in flight with it waits on one query instead of
        # sending its own.
        self._lookups: dict[bytes, asyncio.Future[ApiKey | None]] = {}

    async def authenticate(self, header: str | None) -> ApiKey:
        """Return the key's metadata; raise AuthError (401) for a missing, unknown, revoked or expired key."""
        token = bearer_token(header)
        digest = hash_key(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        elif self._unknown.get(digest, 0.0) > now:
            key = None
        else:
            key = await self._look_up(token, digest)
            if key is None:
                if len(self._unknown) >= MAX_CACHED_KEYS:
                    self._unknown.clear()
                self._unknown[digest] = now + self.cache_ttl_s
            else:
                if len(self._cache) >= MAX_CACHED_KEYS:
                    self._cache.clear()
                self._cache[digest] = (now + self.cache_ttl_s, key)
        if key is None:
            raise AuthError(401, "the API key is not valid; create one with 'rankstream keys create'")
        if not key.usable_at(self.clock()):
            state = "revoked" if key.revoked_at is not None else "expired"
            raise AuthError(401, f"the API key is {state}; create a new one with 'rankstream keys create'")
        return key

    async def _look_up(self, token: str, digest: bytes) -> ApiKey | None:
        """Return ``find_key(token)``, sharing one query among the callers that ask at the same time."""
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(find_key(self.pool, token))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(digest, done))
        # A caller that is cancelled leaves the query running for the others.
        return await asyncio.shield(lookup)

    def _lookup_done(self, digest: bytes, lookup: asyncio.Future[ApiKey | None]) -> None:
        self._lookups.pop(digest, None)
        if not lookup.cancelled():
            # Retrieve the error, so asyncio does not report it as unhandled when every caller was cancelled.
            lookup.exception()

    def verified(self, header: str | None) -> ApiKey | None:
        """Return the key ``header`` carries if this process looked it up and found it usable within the cache time, else None."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_CHARACTERS:
            return None
        cached = self._cache.get(hash_key(token))
        if cached is None or cached[0] <= time.monotonic() or not cached[1].usable_at(self.clock()):
            return None
        return cached[1]

    def forget(self) -> None:
        """Drop every cached lookup, so a revocation made by this process applies at once."""
        self._cache.clear()
        self._unknown.clear()
