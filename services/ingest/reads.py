"""The read API: board definitions, top N with cursors, one athlete, many athletes.

Every standings response names its ``period``, that period's ``status``
(open, provisional or final) and ``ends_at``, and ``resets_at``, when the
board's current period ends. Group boards are read under
``/v1/boards/{board}/groups/{group}/...``. A period whose keys have left Redis
is read from the archive in PostgreSQL, in the same shape.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec
from aiohttp import web

from services.ingest.problems import problem
from services.ingest.state import STATE_KEY, IngestState
from shared import archive
from shared.boards import Board, Scope, board_document, ranking_id
from shared.periods import PeriodStatus, current_period, format_instant, period_bounds, period_status, resets_at, resolve_period
from shared.standings import count_participants, read_ranks, read_top_page, read_user

MAX_LIMIT = 1000
MAX_AROUND = 50
MAX_RANK_USERS = 500
MAX_OFFSET = 10_000_000


class QueryError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")


def _invalid(parameter: str, detail: str) -> QueryError:
    return QueryError(problem(400, "invalid-parameter", "Invalid parameter", detail, parameter=parameter))


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise _invalid(name, f"{name}={raw!r} is invalid; use a whole number from {minimum} to {maximum}")
    return value


class Cursor(msgspec.Struct, forbid_unknown_fields=True):
    """The opaque ``cursor`` of a top-N page: the period it reads and the next position."""

    period: str
    offset: int


def encode_cursor(period: str, offset: int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(Cursor(period=period, offset=offset))).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Return the cursor ``text`` encodes; raise QueryError (400) when it was not made by this API."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = msgspec.json.decode(raw, type=Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _invalid("cursor", "cursor is invalid; pass the next_cursor of a previous page unchanged") from None
    if not 0 <= cursor.offset <= MAX_OFFSET:
        raise _invalid("cursor", "cursor is invalid; pass the next_cursor of a previous page unchanged")
    return cursor


def _board(request: web.Request) -> tuple[IngestState, Board, str | None]:
    """Return the board and group a request addresses; raise QueryError (404 or 400) otherwise."""
    state: IngestState = request.app[STATE_KEY]
    board_id = request.match_info["board"]
    board = state.boards.by_id.get(board_id)
    if board is None:
        raise QueryError(problem(404, "board-not-found", "Board not found", f"no board has id {board_id!r}; GET /v1/boards lists them"))
    group = request.match_info.get("group")
    if board.scope is Scope.GROUP and group is None:
        raise QueryError(problem(
            404, "group-required", "Group required",
            f"board {board.id!r} ranks each group on its own; read /v1/boards/{board.id}/groups/{{group}}/...",
        ))
    if board.scope is Scope.GLOBAL and group is not None:
        raise QueryError(problem(
            404, "board-not-grouped", "Board has no groups",
            f"board {board.id!r} has one global ranking; read /v1/boards/{board.id}/... without /groups/{group}",
        ))
    return state, board, group


def _period(request: web.Request, state: IngestState, board: Board) -> str:
    try:
        return resolve_period(board, request.query.get("period"), state.clock())
    except ValueError as error:
        raise _invalid("period", str(error)) from None


def _period_fields(board: Board, group: str | None, period: str, state: IngestState) -> dict[str, Any]:
    now = state.clock()
    _start, end = period_bounds(board, period)
    next_reset = resets_at(board, now)
    fields: dict[str, Any] = {"board": board.id}
    if group is not None:
        fields["group"] = group
    fields.update(
        period=period,
        status=period_status(board, period, now).value,
        ends_at=None if end is None else format_instant(end),
        resets_at=None if next_reset is None else format_instant(next_reset),
    )
    return fields


async def _archived(state: IngestState, board: Board, group: str | None, period: str) -> bool:
    """Return whether ``period`` is read from PostgreSQL: not open, gone from Redis and archived."""
    if period_status(board, period, state.clock()) is PeriodStatus.OPEN:
        return False
    if await state.redis.exists(state.names.board_scores(ranking_id(board.id, group), period)):
        return False
    return await archive.is_archived(state.pool, board, group, period)


async def _participants(state: IngestState, board: Board, group: str | None, period: str, archived: bool) -> int:
    if archived:
        return await archive.archived_participants(state.pool, board, group, period)
    return await count_participants(state.redis, state.names, board, period, group=group)


def board_info(board: Board, state: IngestState) -> dict[str, Any]:
    """Return a board's definition with its current period, that period's status and ``resets_at``."""
    now = state.clock()
    period = current_period(board, now)
    next_reset = resets_at(board, now)
    return {
        **board_document(board),
        "current_period": period,
        "status": period_status(board, period, now).value,
        "resets_at": None if next_reset is None else format_instant(next_reset),
    }


async def list_boards(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    return _json({"boards": [board_info(board, state) for board in state.boards]})


async def get_board(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    board = state.boards.by_id.get(request.match_info["board"])
    if board is None:
        return problem(404, "board-not-found", "Board not found", f"no board has id {request.match_info['board']!r}; GET /v1/boards lists them")
    return _json(board_info(board, state))


async def get_top(request: web.Request) -> web.Response:
    try:
        state, board, group = _board(request)
        limit = _int_param(request, "limit", 10, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
        cursor_text = request.query.get("cursor")
        if cursor_text is not None:
            cursor = decode_cursor(cursor_text)
            if "period" in request.query and _period(request, state, board) != cursor.period:
                raise _invalid("period", "period differs from the period of the cursor; drop one of them")
            period_bounds_check(board, cursor.period)
            period, offset = cursor.period, cursor.offset
        else:
            period = _period(request, state, board)
    except QueryError as error:
        return error.response
    archived = await _archived(state, board, group, period)
    if archived:
        entries = await archive.archived_top(state.pool, board, group, period, limit, offset)
        participants = await _participants(state, board, group, period, archived)
    else:
        entries, participants = await read_top_page(state.redis, state.names, board, period, limit, offset, group=group)
    next_offset = offset + len(entries)
    next_cursor = encode_cursor(period, next_offset) if len(entries) == limit and next_offset < participants else None
    return _json({**_period_fields(board, group, period, state), "participants": participants, "entries": entries, "next_cursor": next_cursor})


def period_bounds_check(board: Board, period: str) -> None:
    try:
        period_bounds(board, period)
    except ValueError:
        raise _invalid("cursor", "cursor is invalid for this board; pass the next_cursor of a previous page unchanged") from None


async def get_user(request: web.Request) -> web.Response:
    try:
        state, board, group = _board(request)
        period = _period(request, state, board)
        around = _int_param(request, "around", 0, 0, MAX_AROUND)
    except QueryError as error:
        return error.response
    user_id = request.match_info["user_id"]
    if await _archived(state, board, group, period):
        standing = await archive.archived_user(state.pool, board, group, period, user_id, around)
    else:
        standing = await read_user(state.redis, state.names, board, period, user_id, around, group=group)
    if standing is None:
        where = f"board {board.id!r}" if group is None else f"board {board.id!r} group {group!r}"
        return problem(404, "user-not-ranked", "User not ranked", f"user {user_id!r} has no rank on {where} in period {period!r}")
    return _json({**_period_fields(board, group, period, state), **msgspec.structs.asdict(standing)})


class RanksRequest(msgspec.Struct, forbid_unknown_fields=True):
    user_ids: list[str]


async def post_ranks(request: web.Request) -> web.Response:
    try:
        state, board, group = _board(request)
        period = _period(request, state, board)
    except QueryError as error:
        return error.response
    try:
        body = msgspec.json.decode(await request.read(), type=RanksRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        return problem(400, "invalid-body", "Invalid body", f'expected {{"user_ids": ["u1", ...]}}: {error}')
    if not 1 <= len(body.user_ids) <= MAX_RANK_USERS:
        return problem(400, "invalid-body", "Invalid body", f"user_ids contains {len(body.user_ids)} ids; send 1 to {MAX_RANK_USERS}", field="user_ids")
    user_ids = list(dict.fromkeys(body.user_ids))
    archived = await _archived(state, board, group, period)
    if archived:
        ranks = await archive.archived_ranks(state.pool, board, group, period, user_ids)
    else:
        ranks = await read_ranks(state.redis, state.names, board, period, user_ids, group=group)
    participants = await _participants(state, board, group, period, archived)
    return _json({**_period_fields(board, group, period, state), "participants": participants, "ranks": ranks})


async def get_participants(request: web.Request) -> web.Response:
    try:
        state, board, group = _board(request)
        period = _period(request, state, board)
    except QueryError as error:
        return error.response
    participants = await _participants(state, board, group, period, await _archived(state, board, group, period))
    return _json({**_period_fields(board, group, period, state), "participants": participants})


def add_read_routes(app: web.Application) -> None:
    """Register every read route, global and per group."""
    app.router.add_get("/v1/boards/{board}", get_board)
    for prefix in ("/v1/boards/{board}", "/v1/boards/{board}/groups/{group}"):
        app.router.add_get(f"{prefix}/top", get_top)
        app.router.add_get(f"{prefix}/users/{{user_id}}", get_user)
        app.router.add_post(f"{prefix}/ranks", post_ranks)
        app.router.add_get(f"{prefix}/participants", get_participants)
