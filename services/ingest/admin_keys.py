"""Key management over HTTP: /v1/admin/keys, for admin keys only, every call audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
import structlog
from aiohttp import web

from services.ingest.auth import AuthError, require_admin
from services.ingest.problems import problem
from services.ingest.security import SECURITY_KEY, request_key
from services.ingest.state import STATE_KEY, IngestState
from shared import audit
from shared.api_keys import ApiKey, InvalidKeyRequest, KeyKind, create_key, get_key, list_keys, revoke_key
from shared.schema import AwareDatetime, IdString, field_error_from_validation

log = structlog.get_logger(__name__)

# The created key's text is in the body, so no cache may keep it.
_NO_STORE = {"Cache-Control": "no-store"}


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/admin/keys."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: KeyKind
    user_id: IdString | None = None
    expires_at: AwareDatetime | None = None


_new_key_decoder = msgspec.json.Decoder(NewKey)


def key_document(key: ApiKey, now: datetime) -> dict:
    """Describe a key for a response: its metadata and state, never its text or hash."""
    if key.revoked_at is not None:
        state = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": key.id,
        "name": key.name,
        "kind": key.kind.value,
        "user_id": key.user_id,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "state": state,
    }


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json", headers=headers)


async def authorise_admin(request: web.Request, action: str, *, audit_allowed: bool = True) -> ApiKey:
    """Return the caller's admin key, rate-limited, and audit the call.

    Another kind of key is audited as ``denied`` and gets AuthError (403). An
    admin key is audited as ``allowed`` with the method and path, unless the
    caller writes a richer row itself and passes ``audit_allowed=False``.
    """
    state: IngestState = request.app[STATE_KEY]
    key = await request_key(request)
    actor = f"key:{key.id}"
    try:
        require_admin(key)
    except AuthError:
        await audit.record(state.pool, actor, action, audit.Outcome.DENIED, details={"kind": key.kind.value})
        raise
    await request.app[SECURITY_KEY].rate_limiter.check(actor)
    if audit_allowed:
        await audit.record(state.pool, actor, action, audit.Outcome.ALLOWED, details={"method": request.method, "path": request.path})
    return key


async def post_key(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    caller = await authorise_admin(request, "key.create", audit_allowed=False)
    actor = f"key:{caller.id}"
    try:
        new = _new_key_decoder.decode(await request.read())
    except msgspec.ValidationError as error:
        field_error = field_error_from_validation(error)
        reason = field_error.reason
        if field_error.field == "kind" and reason.startswith("Invalid enum value"):
            # msgspec names only the value it got, so list the ones it expected.
            reason = f"{reason}; use 'device', 'server' or 'admin'"
        return problem(400, "invalid-key-request", "Invalid key request", f"{field_error.field}: {reason}", field=field_error.field)
    except msgspec.DecodeError:
        return problem(400, "invalid-json", "Body is not valid JSON", 'send {"name": ..., "kind": "device|server|admin", "user_id": ..., "expires_at": ...}')

    async with state.pool.acquire() as connection, connection.transaction():
        try:
            key, text = await create_key(connection, new.name, new.kind, new.user_id, new.expires_at)
        except InvalidKeyRequest as error:
            await audit.record(connection, actor, "key.create", audit.Outcome.INVALID, details={"kind": new.kind.value, "field": error.field})
            return problem(400, "invalid-key-request", "Invalid key request", f"{error.field}: {error}", field=error.field)
        await audit.record(connection, actor, "key.create", audit.Outcome.OK, target=f"key:{key.id}", details={"kind": key.kind.value, "name": key.name})
    return _json({"key": key_document(key, state.clock()), "secret": text}, status=201, headers=_NO_STORE)


async def get_keys(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    caller = await authorise_admin(request, "key.list", audit_allowed=False)
    keys = await list_keys(state.pool)
    await audit.record(state.pool, f"key:{caller.id}", "key.list", audit.Outcome.OK, details={"count": len(keys)})
    now = state.clock()
    return _json({"keys": [key_document(key, now) for key in keys]})


async def delete_key(request: web.Request) -> web.Response:
    """Revoke a key. Revoking a revoked key succeeds again; only an unknown id is 404."""
    state: IngestState = request.app[STATE_KEY]
    caller = await authorise_admin(request, "key.revoke", audit_allowed=False)
    actor = f"key:{caller.id}"
    key_id = int(request.match_info["key_id"])
    target = f"key:{key_id}"

    async with state.pool.acquire() as connection, connection.transaction():
        revoked_now = await revoke_key(connection, key_id)
        key = await get_key(connection, key_id)
        if key is None:
            await audit.record(connection, actor, "key.revoke", audit.Outcome.NOT_FOUND, target=target)
            return problem(404, "key-not-found", "Key not found", f"no key has id {key_id}; GET /v1/admin/keys lists them")
        await audit.record(connection, actor, "key.revoke", audit.Outcome.OK, target=target, details={"already_revoked": not revoked_now})

    # Other ingest processes drop their cached lookup within api_key_cache_ttl_s.
    state.authenticator.forget()
    return _json({"key": key_document(key, state.clock())})
