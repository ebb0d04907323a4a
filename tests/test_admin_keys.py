"""Key management over HTTP and the CLI: admin keys only, no secret echoed twice, every call audited."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from shared.api_keys import KeyKind
from shared.settings import Settings
from tests.conftest import service_env
from tests.helpers import ingest_client, new_key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audit_rows(db: asyncpg.Connection) -> list[tuple[str, str, str | None, str]]:
    rows = await db.fetch("SELECT actor, action, target, outcome FROM audit_log ORDER BY id")
    return [(row["actor"], row["action"], row["target"], row["outcome"]) for row in rows]


async def key_id_of(db: asyncpg.Connection, name: str) -> int:
    return await db.fetchval("SELECT id FROM api_keys WHERE name = $1", name)


async def test_create_list_revoke_over_http(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """An admin key creates a device key that works, lists it without secrets, revokes it at once."""
    admin = await new_key(settings, KeyKind.ADMIN)
    admin_id = await key_id_of(db, "test")
    event = {"event_id": "e1", "user_id": "u7", "metric": "pushups", "value": 5, "occurred_at": "2026-12-02T10:00:00Z"}
    async with ingest_client(settings) as http:
        created = await http.post("/v1/admin/keys", json={"name": "phone", "kind": "device", "user_id": "u7"}, headers=bearer(admin))
        created_body = await created.json()
        secret = created_body["secret"]
        posted = await http.post("/v1/events", json=event, headers=bearer(secret))
        listed = await http.get("/v1/admin/keys", headers=bearer(admin))
        listed_text = await listed.text()
        revoked = await http.delete(f"/v1/admin/keys/{created_body['key']['id']}", headers=bearer(admin))
        revoked_body = await revoked.json()
        after = await http.post("/v1/events", json={**event, "event_id": "e2"}, headers=bearer(secret))

    device_id = created_body["key"]["id"]
    assert created.status == 201
    assert created.headers["Cache-Control"] == "no-store"
    assert secret.startswith("rsk_")
    assert len(secret) == 47
    assert created_body["key"]["kind"] == "device"
    assert created_body["key"]["user_id"] == "u7"
    assert created_body["key"]["state"] == "active"
    assert posted.status == 202
    assert listed.status == 200
    assert secret not in listed_text
    assert "key_hash" not in listed_text
    assert revoked.status == 200
    assert revoked_body["key"]["state"] == "revoked"
    # The revoking process drops its cache, so the key fails on the very next request.
    assert after.status == 401
    assert await audit_rows(db) == [
        (f"key:{admin_id}", "key.create", f"key:{device_id}", "ok"),
        (f"key:{admin_id}", "key.list", None, "ok"),
        (f"key:{admin_id}", "key.revoke", f"key:{device_id}", "ok"),
    ]


@pytest.mark.parametrize("kind", [KeyKind.SERVER, KeyKind.DEVICE])
async def test_non_admin_key_forbidden(settings: Settings, redis_client, db: asyncpg.Connection, kind: KeyKind) -> None:
    """Server and device keys get 403 on every admin route, and each attempt is audited as denied."""
    key = await new_key(settings, kind, "u1" if kind is KeyKind.DEVICE else None)
    key_id = await key_id_of(db, "test")
    async with ingest_client(settings) as http:
        statuses = [
            (await http.get("/v1/admin/keys", headers=bearer(key))).status,
            (await http.post("/v1/admin/keys", json={"name": "x", "kind": "admin"}, headers=bearer(key))).status,
            (await http.delete(f"/v1/admin/keys/{key_id}", headers=bearer(key))).status,
        ]
        body = await (await http.get("/v1/admin/keys", headers=bearer(key))).json(content_type=None)

    assert statuses == [403, 403, 403]
    assert body["detail"] == f"this endpoint needs an admin key, and this is a {kind.value} key"
    assert await audit_rows(db) == [
        (f"key:{key_id}", "key.list", None, "denied"),
        (f"key:{key_id}", "key.create", None, "denied"),
        (f"key:{key_id}", "key.revoke", None, "denied"),
        (f"key:{key_id}", "key.list", None, "denied"),
    ]
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 1


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        ({"name": "x", "kind": "device"}, "user_id", "user_id: a device key needs a user id, and only a device key takes one"),
        ({"name": "x", "kind": "server", "user_id": "u1"}, "user_id", "user_id: a device key needs a user id, and only a device key takes one"),
        ({"name": "x", "kind": "root"}, "kind", "kind: Invalid enum value 'root'; use 'device', 'server' or 'admin'"),
        ({"name": "", "kind": "server"}, "name", "name: Expected `str` of length >= 1"),
        ({"name": "x", "kind": "server", "scope": "all"}, "$", "$: Object contains unknown field `scope`"),
        ({"name": "x", "kind": "device", "user_id": "u 1"}, "user_id", "user_id: Expected `str` matching regex '^[A-Za-z0-9._:@~+-]+$'"),
        ({"name": "x", "kind": "server", "expires_at": "2027-01-01T00:00:00"}, "expires_at", "expires_at: Expected `datetime` with a timezone component"),
    ],
    ids=["device without user", "server with user", "unknown kind", "empty name", "unknown field", "bad user id", "expiry without offset"],
)
async def test_invalid_key_request_names_field(settings: Settings, redis_client, db: asyncpg.Connection, body: dict, field: str, detail: str) -> None:
    """A bad key request gets 400 naming the field and creates nothing."""
    admin = await new_key(settings, KeyKind.ADMIN)
    async with ingest_client(settings) as http:
        response = await http.post("/v1/admin/keys", json=body, headers=bearer(admin))
        problem = await response.json(content_type=None)

    assert response.status == 400
    assert problem["field"] == field
    assert problem["detail"] == detail
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 1


async def test_revoke_unknown_key_is_404(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """Revoking an id no key has gets 404 and a not_found audit row; a huge id is 404 too, never a 500."""
    admin = await new_key(settings, KeyKind.ADMIN)
    async with ingest_client(settings) as http:
        missing = await http.delete("/v1/admin/keys/999", headers=bearer(admin))
        huge = await http.delete("/v1/admin/keys/99999999999999999999", headers=bearer(admin))

    assert missing.status == 404
    assert huge.status == 404
    assert [row[1:] for row in await audit_rows(db)] == [("key.revoke", "key:999", "not_found")]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services", "keys", *args], env=service_env(settings), capture_output=True, text=True, timeout=60
    )


async def test_cli_keys_audited(settings: Settings, db: asyncpg.Connection) -> None:
    """rankstream keys create, list and revoke print what they did and each writes an audit row."""
    created = run_cli(settings, "create", "--name", "watch", "--kind", "device", "--user", "u9", "--expires", "2030-01-01T00:00:00Z")
    key_id = await key_id_of(db, "watch")
    listed = run_cli(settings, "list")
    revoked = run_cli(settings, "revoke", str(key_id))
    again = run_cli(settings, "revoke", str(key_id))
    invalid = run_cli(settings, "create", "--name", "bad", "--kind", "device", "--user", "u 9")

    assert created.returncode == 0
    assert created.stdout.strip().splitlines()[-1].startswith("rsk_")
    assert listed.stdout.startswith(f"{key_id}\twatch\tdevice\tu9\tactive\t")
    assert listed.stdout.strip().endswith("\t2030-01-01T00:00:00+00:00")
    assert revoked.stdout == f"revoked key {key_id}\n"
    assert again.returncode == 1
    assert again.stderr.endswith(f"no active key has id {key_id}\n")
    assert invalid.returncode == 2
    assert invalid.stderr.splitlines()[-1] == "rankstream: --user: user id must be 1 to 64 characters from A-Z, a-z, 0-9 and . _ : @ ~ + -"
    rows = await audit_rows(db)
    assert [row[1:] for row in rows] == [
        ("key.create", f"key:{key_id}", "ok"),
        ("key.list", None, "ok"),
        ("key.revoke", f"key:{key_id}", "ok"),
        ("key.revoke", f"key:{key_id}", "not_found"),
        ("key.create", None, "invalid"),
    ]
    assert all(row[0].startswith("cli:") for row in rows)


async def test_other_admin_routes_audited_as_allowed(settings: Settings, redis_client, db: asyncpg.Connection) -> None:
    """An admin route that uses authorise_admin gets an 'allowed' audit row with method and path."""
    from aiohttp import web

    from services.ingest.admin_keys import authorise_admin

    async def handler(request: web.Request) -> web.Response:
        await authorise_admin(request, "example.read")
        return web.json_response({})

    admin = await new_key(settings, KeyKind.ADMIN)
    admin_id = await key_id_of(db, "test")
    async with ingest_client(settings, extra_get_routes={"/v1/admin/example": handler}) as http:
        response = await http.get("/v1/admin/example", headers=bearer(admin))
    details = await db.fetchval("SELECT details::text FROM audit_log")

    assert response.status == 200
    assert await audit_rows(db) == [(f"key:{admin_id}", "example.read", None, "allowed")]
    assert details == '{"path": "/v1/admin/example", "method": "GET"}'
