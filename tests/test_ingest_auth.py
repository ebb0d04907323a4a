"""Who may post: device keys for their own athlete only, no revoked or expired keys, no key in any log."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import asyncpg
import pytest

import services.ingest.auth
import shared.api_keys
from services.ingest.auth import AuthError, Authenticator
from services.ingest.security import SECURITY_KEY
from shared.api_keys import KeyKind, create_key, hash_key, revoke_key
from shared.database import create_pool
from shared.settings import Settings
from tests.conftest import service_env
from tests.helpers import ingest_client, new_key, wait_for, wait_healthy
from tests.processes import service_processes


def event(event_id: str, user_id: str = "u1") -> dict:
    return {"event_id": event_id, "user_id": user_id, "metric": "pushups", "value": 20, "occurred_at": "2026-12-02T10:00:00Z"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def stream_length(redis_client, settings: Settings) -> int:
    return await redis_client.xlen(f"{settings.namespace}:{{events}}:stream")


async def test_device_key_for_other_athlete_forbidden(settings: Settings, redis_client) -> None:
    """A device key posting for another user_id gets 403 and nothing of the batch is appended."""
    key = await new_key(settings, KeyKind.DEVICE, "u1")
    async with ingest_client(settings) as http:
        other = await http.post("/v1/events", json=[event("e1"), event("e2", "u2")], headers=bearer(key))
        other_body = await other.json(content_type=None)
        own = await http.post("/v1/events", json=[event("e3")], headers=bearer(key))

    assert other.status == 403
    assert other.content_type == "application/problem+json"
    assert other_body["type"] == "urn:rankstream:problem:forbidden-user"
    assert other_body["detail"] == "this device key may post only for user_id 'u1', not 'u2'"
    assert own.status == 202
    assert await stream_length(redis_client, settings) == 1


async def test_server_key_posts_for_anyone(settings: Settings, redis_client) -> None:
    """A server key may post for several athletes in one batch."""
    key = await new_key(settings, KeyKind.SERVER)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=[event("e1", "u1"), event("e2", "u2")], headers=bearer(key))

    assert response.status == 202
    assert await stream_length(redis_client, settings) == 2


async def test_admin_key_cannot_post(settings: Settings, redis_client) -> None:
    """An admin key gets 403 on POST /v1/events: it manages and does not score."""
    key = await new_key(settings, KeyKind.ADMIN)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=[event("e1")], headers=bearer(key))
        body = await response.json(content_type=None)

    assert response.status == 403
    assert body["detail"] == "admin keys manage Rankstream and cannot post events; post with a server or device key"
    assert await stream_length(redis_client, settings) == 0


async def test_revoked_and_expired_keys_rejected(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """A revoked key and an expired key each get 401 naming why."""
    revoked, revoked_text = await create_key(db, "revoked", KeyKind.SERVER)
    await revoke_key(db, revoked.id)
    _expired, expired_text = await create_key(db, "expired", KeyKind.SERVER, expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    async with ingest_client(settings) as http:
        revoked_response = await http.post("/v1/events", json=[event("e1")], headers=bearer(revoked_text))
        revoked_body = await revoked_response.json(content_type=None)
        expired_response = await http.post("/v1/events", json=[event("e2")], headers=bearer(expired_text))
        expired_body = await expired_response.json(content_type=None)

    assert revoked_response.status == 401
    assert revoked_response.headers["WWW-Authenticate"] == 'Bearer realm="rankstream"'
    assert revoked_body["detail"] == "the API key is revoked; create a new one with 'rankstream keys create'"
    assert expired_response.status == 401
    assert expired_body["detail"] == "the API key is expired; create a new one with 'rankstream keys create'"
    assert await stream_length(redis_client, settings) == 0


async def test_key_expiring_later_still_works(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """A key whose expiry is ahead is accepted."""
    _key, text = await create_key(db, "later", KeyKind.SERVER, expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=[event("e1")], headers=bearer(text))

    assert response.status == 202


async def test_revocation_reaches_running_process(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """A key revoked in the database stops working in a process that cached it, within the cache TTL."""
    key, text = await create_key(db, "cached", KeyKind.SERVER)
    async with ingest_client(replace(settings, api_key_cache_ttl_s=1)) as http:
        first = await http.post("/v1/events", json=[event("e1")], headers=bearer(text))
        await revoke_key(db, key.id)
        attempts = 0

        async def rejected() -> bool:
            nonlocal attempts
            attempts += 1
            response = await http.post("/v1/events", json=[event(f"r{attempts}")], headers=bearer(text))
            return response.status == 401

        await wait_for(rejected, timeout_s=6.0, what="the revoked key to be rejected")

    assert first.status == 202


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "bearer rsk_" + "x" * 300, "Token rsk_abc"],
    ids=["basic scheme", "no key", "blank key", "oversize key", "other scheme"],
)
async def test_malformed_authorization_is_401(settings: Settings, redis_client, header: str) -> None:
    """Malformed or oversize Authorization headers get 401 problem+json and append nothing."""
    async with ingest_client(settings) as http:
        response = await http.post("/v1/events", json=[event("e1")], headers={"Authorization": header})
        body = await response.json(content_type=None)

    assert response.status == 401
    assert body["status"] == 401
    assert body["type"] == "urn:rankstream:problem:unauthorized"
    assert await stream_length(redis_client, settings) == 0


async def test_key_hash_compared_constant_time(settings: Settings, redis_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication compares the stored hash with hmac.compare_digest, never the key text with ==."""
    key = await new_key(settings)
    calls: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(left: bytes, right: bytes) -> bool:
        calls.append((left, right))
        return compare_digest(left, right)

    monkeypatch.setattr(shared.api_keys.hmac, "compare_digest", spy)
    async with ingest_client(settings) as http:
        accepted = await http.post("/v1/events", json=[event("e1")], headers=bearer(key))
        unknown = await http.post("/v1/events", json=[event("e2")], headers=bearer(key[:-1] + ("A" if key[-1] != "A" else "B")))

    assert accepted.status == 202
    assert unknown.status == 401
    # Only the known key reaches a comparison: an unknown hash finds no row.
    assert calls == [(hash_key(key), hash_key(key))]
    assert all(isinstance(side, bytes) and len(side) == 32 for pair in calls for side in pair)


async def test_key_never_in_logs(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Keys passed, revoked, mistyped or created over HTTP and the CLI appear in no log line or audit row."""
    env = {**service_env(settings), "RANKSTREAM_LOG_LEVEL": "debug"}
    created = subprocess.run(
        [sys.executable, "-m", "services", "keys", "create", "--name", "cli-admin", "--kind", "admin"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    admin_key = created.stdout.strip().splitlines()[-1]
    server_key = await new_key(settings)
    wrong_key = "rsk_" + "Q" * 43
    base = f"http://127.0.0.1:{settings.http_port}"

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", RANKSTREAM_LOG_LEVEL="debug")
        await wait_healthy(f"{base}/healthz")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/events", json=[event("e1")], headers=bearer(server_key)) as response:
                assert response.status == 202
            async with http.post(f"{base}/v1/events", json=[event("e2")], headers=bearer(wrong_key)) as response:
                assert response.status == 401
            async with http.post(f"{base}/v1/admin/keys", json={"name": "phone", "kind": "device", "user_id": "u1"}, headers=bearer(admin_key)) as response:
                assert response.status == 201
                device = await response.json()
            async with http.delete(f"{base}/v1/admin/keys/{device['key']['id']}", headers=bearer(admin_key)) as response:
                assert response.status == 200
            async with http.post(f"{base}/v1/events", json=[event("e3")], headers=bearer(device["secret"])) as response:
                assert response.status == 401
        services.stop("ingest")
        ingest_log = services.log_text("ingest")

    connection = await asyncpg.connect(settings.database_url)
    try:
        audit_text = "\n".join(await connection.fetchval("SELECT array_agg(audit_log::text) FROM audit_log"))
    finally:
        await connection.close()

    assert '"event": "audit"' in ingest_log
    assert "key.create" in audit_text
    for secret in (admin_key, server_key, wrong_key, device["secret"]):
        assert secret not in ingest_log
        assert secret not in created.stderr
        assert secret.removeprefix("rsk_") not in ingest_log
        assert secret.removeprefix("rsk_") not in audit_text


async def test_unknown_key_flood_keeps_real_keys_cached(
    settings: Settings, redis_client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More unknown keys than the cache bound do not evict a real key, so it needs no new lookup."""
    monkeypatch.setattr(services.ingest.auth, "MAX_CACHED_KEYS", 5)
    _key, text = await create_key(db, "real", KeyKind.SERVER)
    pool = await create_pool(settings.database_url, max_size=1)
    authenticator = Authenticator(pool, 60, lambda: datetime.now(timezone.utc))
    try:
        await authenticator.authenticate(f"Bearer {text}")
        for index in range(20):
            with pytest.raises(AuthError):
                await authenticator.authenticate(f"Bearer rsk_unknown{index}")
    finally:
        await pool.close()
    # With the pool closed, only a cache hit can still authenticate the real key.
    key = await authenticator.authenticate(f"Bearer {text}")

    assert key.name == "real"
    assert len(authenticator._unknown) <= 5


async def test_failed_authentications_limited_per_address(settings: Settings, redis_client) -> None:
    """After the burst of 401s, a key not verified yet gets 429; a verified key and anonymous reads go on."""
    limited = replace(settings, auth_failures_per_minute=6, auth_failure_burst=3, api_key_cache_ttl_s=300)
    key = await new_key(settings)
    unverified_key = await new_key(settings)
    async with ingest_client(limited) as http:
        valid_first = await http.post("/v1/events", json=[event("e1")], headers=bearer(key))
        started_s = time.monotonic()
        failures = [(await http.post("/v1/events", json=[event("x")], headers=bearer(f"rsk_guess{i}"))).status for i in range(3)]
        blocked = await http.post("/v1/events", json=[event("e2")], headers=bearer(unverified_key))
        elapsed_ms = (time.monotonic() - started_s) * 1000
        blocked_body = await blocked.json(content_type=None)
        verified = await http.post("/v1/events", json=[event("e3")], headers=bearer(key))
        anonymous_read = await http.get("/v1/boards")

    # One token takes 10,000 ms to refill; the requests themselves refilled up to elapsed_ms of it.
    retry_after_s = int(blocked.headers["Retry-After"])
    assert valid_first.status == 202
    assert failures == [401, 401, 401]
    assert blocked.status == 429
    assert math.ceil((10_000 - elapsed_ms) / 1000) <= retry_after_s <= 10
    assert blocked_body["detail"] == (
        f"too many failed authentications from this address (at most 6 a minute); retry after {retry_after_s} s with a valid key"
    )
    assert verified.status == 202
    assert anonymous_read.status == 200
    assert await stream_length(redis_client, settings) == 2


async def test_revoked_key_loses_failure_limit_exemption(settings: Settings, redis_client) -> None:
    """A key revoked through this process is no longer exempt: from a blocked address it gets 429, not its 401."""
    limited = replace(settings, auth_failures_per_minute=6, auth_failure_burst=3, api_key_cache_ttl_s=300)
    admin = await new_key(settings, KeyKind.ADMIN)
    async with ingest_client(limited) as http:
        created = await http.post("/v1/admin/keys", json={"name": "phone", "kind": "server"}, headers=bearer(admin))
        created_body = await created.json()
        key = created_body["secret"]
        verified = await http.post("/v1/events", json=[event("e1")], headers=bearer(key))
        revoked = await http.delete(f"/v1/admin/keys/{created_body['key']['id']}", headers=bearer(admin))
        failures = [(await http.post("/v1/events", json=[event("x")], headers=bearer(f"rsk_guess{i}"))).status for i in range(3)]
        after_revocation = await http.post("/v1/events", json=[event("e2")], headers=bearer(key))
        admin_after = await http.get("/v1/admin/keys", headers=bearer(admin))

    assert created.status == 201
    assert verified.status == 202
    assert revoked.status == 200
    assert failures == [401, 401, 401]
    assert after_revocation.status == 429
    # A revocation drops every cached lookup, so the admin key is no longer exempt either.
    assert admin_after.status == 429
    assert await stream_length(redis_client, settings) == 1


class CountingPool:
    """A real pool that counts the key lookups sent through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetchrow(self, query: str, *args):
        self.queries += 1
        return await self.pool.fetchrow(query, *args)


async def test_concurrent_requests_share_one_lookup(settings: Settings, db: asyncpg.Connection) -> None:
    """Fifty requests with a key not cached yet send one query; a later unknown key sends its own."""
    _key, text = await create_key(db, "busy", KeyKind.SERVER)
    pool = await create_pool(settings.database_url, max_size=4)
    counting = CountingPool(pool)
    authenticator = Authenticator(counting, 60, lambda: datetime.now(timezone.utc))  # type: ignore[arg-type]
    try:
        keys = await asyncio.gather(*(authenticator.authenticate(f"Bearer {text}") for _ in range(50)))
        queries_for_known = counting.queries
        unknown = await asyncio.gather(*(authenticator.authenticate("Bearer rsk_unknown") for _ in range(3)), return_exceptions=True)
    finally:
        await pool.close()

    assert queries_for_known == 1
    assert {key.name for key in keys} == {"busy"}
    assert counting.queries == 2
    assert [type(error) for error in unknown] == [AuthError, AuthError, AuthError]
    assert authenticator._lookups == {}


async def test_reads_with_a_key_skip_the_address_check(settings: Settings, redis_client) -> None:
    """From an address out of failures, a read that sends a key gets 200 without a call to Redis, and a write gets 429."""
    limited = replace(settings, auth_failures_per_minute=1, auth_failure_burst=1)
    key = await new_key(settings)
    async with ingest_client(limited) as http:
        limiter = http.app[SECURITY_KEY].auth_failures.limiter
        failure = await http.post("/v1/events", json=[event("g1")], headers=bearer("rsk_guess"))
        calls_before_read = limiter.batcher.calls_sent
        read = await http.get("/v1/boards", headers=bearer(key))
        calls_after_read = limiter.batcher.calls_sent
        write = await http.post("/v1/events", json=[event("g2")], headers=bearer(key))

    assert failure.status == 401
    assert read.status == 200
    assert calls_after_read == calls_before_read
    assert write.status == 429
    assert await stream_length(redis_client, settings) == 0
