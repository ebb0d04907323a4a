"""Admin API for board definitions: ``/v1/admin/boards`` (admin keys only).

``GET`` lists the stored definitions. ``POST`` applies a set declaratively,
as ``rankstream boards apply`` does; ``PUT /v1/admin/boards/{board}`` creates or
updates one. Applying is idempotent and all-or-nothing. An invalid definition
gets 400 and a rejected change of a board that has scores gets 409, and in
both cases nothing is stored. The ingest that served the request reloads at
once; other processes within their poll interval.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from services.ingest.admin_keys import authorise_admin
from services.ingest.problems import problem
from services.ingest.state import STATE_KEY, IngestState
from shared.board_store import apply_boards, list_boards, parse_board_set
from shared.boards import BoardError, board_document, board_from_document

log = structlog.get_logger(__name__)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(data), content_type="application/json")


async def _body(request: web.Request) -> object:
    try:
        return msgspec.json.decode(await request.read())
    except msgspec.DecodeError as error:
        raise BoardError(f"body: not valid JSON: {error}") from None


async def _apply(request: web.Request, boards: list) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    async with state.pool.acquire() as connection:
        try:
            report = await apply_boards(connection, boards)
        except BoardError as error:
            log.info("board change rejected", error=str(error))
            return problem(409, "board-change-rejected", "Board change rejected", str(error))
        state.boards.replace(await list_boards(connection))
    log.info("boards applied", created=report.created, updated=report.updated, unchanged=len(report.unchanged))
    return _json({"created": report.created, "updated": report.updated, "unchanged": report.unchanged})


async def get_admin_boards(request: web.Request) -> web.Response:
    await authorise_admin(request, "boards.list")
    state: IngestState = request.app[STATE_KEY]
    return _json({"boards": [board_document(board) for board in await list_boards(state.pool)]})


async def post_admin_boards(request: web.Request) -> web.Response:
    await authorise_admin(request, "boards.apply")
    try:
        boards = parse_board_set(await _body(request))
    except BoardError as error:
        return problem(400, "invalid-board", "Invalid board definition", str(error))
    return await _apply(request, boards)


async def put_admin_board(request: web.Request) -> web.Response:
    await authorise_admin(request, "boards.apply")
    board_id = request.match_info["board"]
    try:
        document = await _body(request)
        if isinstance(document, dict):
            document.setdefault("id", board_id)
            if document["id"] != board_id:
                raise BoardError(f"body.id: {document['id']!r} differs from the board id {board_id!r} in the path")
        board = board_from_document(document, "body")
    except BoardError as error:
        return problem(400, "invalid-board", "Invalid board definition", str(error))
    return await _apply(request, [board])


def add_admin_board_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/boards", get_admin_boards)
    app.router.add_post("/v1/admin/boards", post_admin_boards)
    app.router.add_put("/v1/admin/boards/{board}", put_admin_board)
