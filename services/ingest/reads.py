"""The read API: board definitions, top N and one athlete's standing."""

from __future__ import annotations

import msgspec
from aiohttp import web

from services.ingest.problems import problem
from services.ingest.state import STATE_KEY, IngestState
from shared.boards import Board
from shared.periods import period_bounds, resolve_period
from shared.standings import count_participants, read_top, read_user

MAX_LIMIT = 1000
MAX_AROUND = 50


class QueryError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise QueryError(problem(400, "invalid-parameter", "Invalid parameter", f"{name}={raw!r} is invalid; use a whole number from {minimum} to {maximum}", parameter=name))
    return value


def _board(request: web.Request) -> tuple[IngestState, Board]:
    state: IngestState = request.app[STATE_KEY]
    board_id = request.match_info["board"]
    board = state.boards.by_id.get(board_id)
    if board is None:
        raise QueryError(problem(404, "board-not-found", "Board not found", f"no board has id {board_id!r}; GET /v1/boards lists them"))
    return state, board


def _period(request: web.Request, state: IngestState, board: Board) -> str:
    try:
        return resolve_period(board, request.query.get("period"), state.clock())
    except ValueError as error:
        raise QueryError(problem(400, "invalid-parameter", "Invalid parameter", str(error), parameter="period")) from None


def board_document(board: Board, state: IngestState) -> dict:
    period = resolve_period(board, None, state.clock())
    _start, end = period_bounds(board, period)
    return {
        "id": board.id,
        "metric": board.metric,
        "operator": board.operator.value,
        "order": board.order.value,
        "reset": board.reset.value,
        "timezone": board.timezone,
        "title": board.title,
        "unit": board.unit,
        "decimals": board.decimals,
        "current_period": period,
        "resets_at": None if end is None else end.isoformat().replace("+00:00", "Z"),
    }


async def list_boards(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    return _json({"boards": [board_document(board, state) for board in state.boards]})


async def get_top(request: web.Request) -> web.Response:
    try:
        state, board = _board(request)
        period = _period(request, state, board)
        limit = _int_param(request, "limit", 10, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 10_000_000)
    except QueryError as error:
        return error.response
    entries = await read_top(state.redis, state.names, board, period, limit, offset)
    participants = await count_participants(state.redis, state.names, board, period)
    return _json({"board": board.id, "period": period, "participants": participants, "entries": entries})


async def get_user(request: web.Request) -> web.Response:
    try:
        state, board = _board(request)
        period = _period(request, state, board)
        around = _int_param(request, "around", 0, 0, MAX_AROUND)
    except QueryError as error:
        return error.response
    user_id = request.match_info["user_id"]
    standing = await read_user(state.redis, state.names, board, period, user_id, around)
    if standing is None:
        return problem(404, "user-not-ranked", "User not ranked", f"user {user_id!r} has no score on board {board.id!r} in period {period!r}")
    return _json({"board": board.id, "period": period, **msgspec.structs.asdict(standing)})
