"""Hiding athletes from every board without deleting their history.

Operators hide banned, staff or test accounts with ``/v1/admin/hidden/{user_id}``
and an admin key. Athletes opt out with ``/v1/users/{user_id}/opt-out`` and
their own device key, or an app does it with a server key. PostgreSQL stores one row per
source; Redis mirrors the union in ``Names.hidden_users``, which every rank
read and the ranker consult. Scores keep accumulating while hidden, so
unhiding restores the athlete's exact standing.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from services.ingest.admin_keys import authorise_admin
from services.ingest.auth import AuthError
from services.ingest.security import SECURITY_KEY, request_key
from services.ingest.state import STATE_KEY, IngestState
from shared.api_keys import KeyKind
from shared.schema import IdString

log = structlog.get_logger(__name__)

OPERATOR = "operator"
ATHLETE = "athlete"


class HideRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    try:
        return msgspec.convert(user_id, IdString)
    except msgspec.ValidationError:
        raise web.HTTPBadRequest(text="user_id is invalid; use 1-64 letters, digits or ._:@~+-") from None


async def set_hidden(state: IngestState, user_id: str, source: str, hidden: bool, reason: str = "") -> bool:
    """Store or remove one source's hiding of ``user_id``, then mirror it to Redis; return whether hidden now."""
    async with state.pool.acquire() as connection, connection.transaction():
        if hidden:
            await connection.execute(
                "INSERT INTO hidden_athletes (user_id, source, reason) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id, source) DO UPDATE SET reason = excluded.reason",
                user_id, source, reason,
            )
        else:
            await connection.execute("DELETE FROM hidden_athletes WHERE user_id = $1 AND source = $2", user_id, source)
        still_hidden = await connection.fetchval("SELECT EXISTS (SELECT 1 FROM hidden_athletes WHERE user_id = $1)", user_id)
    if still_hidden:
        await state.redis.sadd(state.names.hidden_users, user_id)
    else:
        await state.redis.srem(state.names.hidden_users, user_id)
    log.info("athlete visibility changed", user_id=user_id, source=source, hidden=still_hidden)
    return still_hidden


async def _reason(request: web.Request) -> str:
    body = await request.read()
    if not body:
        return ""
    try:
        return msgspec.json.decode(body, type=HideRequest).reason
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise web.HTTPBadRequest(text=f'expected {{"reason": "..."}} or no body: {error}') from None


async def put_hidden(request: web.Request) -> web.Response:
    await authorise_admin(request, "athletes.hide")
    user_id = _user_id(request)
    hidden = await set_hidden(request.app[STATE_KEY], user_id, OPERATOR, True, await _reason(request))
    return _json({"user_id": user_id, "hidden": hidden})


async def delete_hidden(request: web.Request) -> web.Response:
    await authorise_admin(request, "athletes.unhide")
    user_id = _user_id(request)
    hidden = await set_hidden(request.app[STATE_KEY], user_id, OPERATOR, False)
    return _json({"user_id": user_id, "hidden": hidden})


async def get_hidden(request: web.Request) -> web.Response:
    await authorise_admin(request, "athletes.list_hidden")
    state: IngestState = request.app[STATE_KEY]
    rows = await state.pool.fetch("SELECT user_id, source, reason, hidden_at FROM hidden_athletes ORDER BY user_id, source")
    return _json({"hidden": [
        {"user_id": row["user_id"], "source": row["source"], "reason": row["reason"], "hidden_at": row["hidden_at"]} for row in rows
    ]})


async def _authorise_athlete(request: web.Request, user_id: str) -> None:
    """Check that the key may change ``user_id``'s visibility, after taking the request's token from the key's bucket."""
    key = await request_key(request)
    # Every request costs a token, as on the other routes that check a key, so a
    # client cannot flood PostgreSQL with opt-out changes.
    await request.app[SECURITY_KEY].rate_limiter.check(f"key:{key.id}")
    if key.kind is KeyKind.DEVICE and key.user_id != user_id:
        raise AuthError(403, f"this device key may change only user_id {key.user_id!r}, not {user_id!r}")


async def put_opt_out(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    await _authorise_athlete(request, user_id)
    hidden = await set_hidden(request.app[STATE_KEY], user_id, ATHLETE, True, "opted out")
    return _json({"user_id": user_id, "hidden": hidden})


async def delete_opt_out(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    await _authorise_athlete(request, user_id)
    hidden = await set_hidden(request.app[STATE_KEY], user_id, ATHLETE, False)
    return _json({"user_id": user_id, "hidden": hidden})


def add_visibility_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/hidden", get_hidden)
    app.router.add_put("/v1/admin/hidden/{user_id}", put_hidden)
    app.router.add_delete("/v1/admin/hidden/{user_id}", delete_hidden)
    app.router.add_put("/v1/users/{user_id}/opt-out", put_opt_out)
    app.router.add_delete("/v1/users/{user_id}/opt-out", delete_opt_out)
